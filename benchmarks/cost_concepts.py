"""Benchmark: what erasing many concepts at once costs, against one, on SD 1.4's UNet (CPU miniature).

Its experiment is cost-concepts (`python benchmarks/run.py cost-concepts`). The model is sd_cost.py's
CPU miniature: SD 1.4's UNet config with random weights at 8x8 latents, a one-layer text encoder
with the built-in world's tokenizer. The concepts are phrases of that vocabulary ("red striped
circle", ...), 1, 10 and 100 of them. Each cell runs in its own process and measures the whole erase
call and the peak RSS from just after the model loads (sd_cost.reset_peak_memory):
  uce     the closed form: one least-squares solve per layer, a row per concept token
  esd-x   a bank method: the teacher bank grows to one trajectory per concept, then 3 student steps
Ratios are to the same method's one-concept cell.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import add_output_flags, heading, in_own_process, parse_args_or_run_cell, run_meta, write_results
from sd_cost import build_model, device_meta, peak_memory_gib, reset_peak_memory

COUNTS = (1, 10, 100)
METHODS = ("uce", "esd-x")


def concept_names(n: int) -> list[str]:
    from erasekit.shapes.world import COLOURS, SHAPES, TEXTURES

    return [f"{c} {t} {s}" for s in SHAPES for c in COLOURS for t in TEXTURES][:n]


def run_cell(folder: str, method: str, n: int) -> dict:
    import warnings

    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline

    pipe = load_pipeline(folder, device="cpu", dtype="fp32")
    reset_peak_memory(False)
    settings = {} if method == "uce" else dict(steps=3, batch_size=1, bank_trajectories=1, ddim_steps=4)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bank's growth to one trajectory per concept is the point here
        erasure = erase(pipe, method=method, concepts=concept_names(n), progress=False, **settings)
    return {"method": method, "concepts": n, "erase_s": round(time.perf_counter() - start, 3), "peak_gib": round(peak_memory_gib(False), 3),
            "bank_trajectories": erasure.metadata["teacher_bank_trajectories"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_flags(parser)
    args = parse_args_or_run_cell(parser, run_cell)
    if args is None:
        return
    meta = run_meta() | device_meta("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "sd14"
        build_model("sd14", 8, folder)
        for method in METHODS:
            for n in COUNTS:
                rows.append(in_own_process(__file__, dict(folder=str(folder), method=method, n=n), args.results_dir))
                print(json.dumps(rows[-1]), flush=True)
    one = {r["method"]: r for r in rows if r["concepts"] == 1}
    lines = heading("Erasing 1, 10 and 100 concepts at once: time and peak memory (SD 1.4 UNet, CPU miniature)", meta) + [
        f"Device: {meta['device']}; torch {meta['torch']}, diffusers {meta['diffusers']}. SD 1.4's UNet config, random weights, 8x8 latents. "
        "esd-x: 3 steps of batch 1, a bank of one 4-step trajectory per concept. One run per cell, each in its own process.", "",
        "| method | concepts | bank trajectories | erase (s) | vs one concept | peak RSS (GiB) | vs one concept |", "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = one[r["method"]]
        lines.append(f"| {r['method']} | {r['concepts']} | {r['bank_trajectories'] or '—'} | {r['erase_s']:.1f} | {r['erase_s'] / base['erase_s']:.1f}x | "
                     f"{r['peak_gib']:.2f} | {r['peak_gib'] / base['peak_gib']:.2f}x |")
    write_results(args.results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
