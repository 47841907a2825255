"""Benchmark: the cost of erasing from full-size Stable Diffusion UNets, erasekit against two references.

Run from the repository root:
    .venv/bin/python benchmarks/sd_cost.py          # on a GPU: SD 1.4 and SD 2.1 at 512 px, SDXL at 1024 px, bf16 and fp16 (+ fp32 for SD 1.4)
    .venv/bin/python benchmarks/sd_cost.py --cpu    # on the CPU: SD 1.4 at 8x8 latents, fp32 and bf16
Its experiments are sd-cost-gpu and sd-cost-cpu (`python benchmarks/run.py sd-cost-gpu`); the results
record the command, the device, and the torch and diffusers versions.

The UNets are built from their configs with random weights (tests/data/*_unet_config.json): no
download, and time and memory do not depend on the weights' values. The text encoder is a
one-layer stand-in (erasekit moves it off the GPU while training anyway; the references keep
theirs, so with the real one they would hold 0.2-0.7 GB more than measured here). Each cell
(model, dtype, variant) runs in its own process, and its peak memory is taken over the erase
alone, from just after the model is loaded (loading float32 files into a half-precision pipeline
passes through float32, which a user's half-precision files would not): on a GPU the peak
allocated memory (weights, bank, activations, optimiser state), on the CPU the peak RSS (reset
through /proc/self/clear_refs). Batch 1 everywhere.

Variants:
  esd-x, abo        erasekit: teacher bank built once, then student-only steps
  esd-x+gc, abo+gc  the same with gradient checkpointing of the student
  uce               erasekit's closed form (no training steps)
  ref-esd           two UNets, x_t sampled by DDIM every step (reference_esd.py)
  ref-abo           Algorithm 1 as written: two UNets, x_t sampled every step (reference_abo.py)
Step time: the median time between optimiser steps. Erase: the whole call, bank included.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from statistics import median

from common import add_output_flags, heading, in_own_process, parse_args_or_run_cell, peak_memory_gib, reset_peak_memory, run_meta, write_results

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"sd14": "sd14_unet_config.json", "sd21": "sd21_unet_config.json", "sdxl": "sdxl_unet_config.json", "tiny": "tiny_unet_config.json"}
VARIANTS = ("esd-x", "esd-x+gc", "abo", "abo+gc", "uce", "ref-esd", "ref-abo")
MODES = {  # what a plain run measures, per device
    "gpu": dict(models="sd14,sd21,sdxl", dtypes="bf16,fp16", fp32_models="sd14", latent=64, sdxl_latent=128, steps=10, bank=2, esd_ddim=50, abo_ddim=35),
    "cpu": dict(models="sd14", dtypes="fp32,bf16", fp32_models="", latent=8, sdxl_latent=8, steps=3, bank=1, esd_ddim=4, abo_ddim=4),
}


def build_model(name: str, latent: int, folder: Path) -> None:
    """Save a random-weight pipeline with the `name` UNet config at `latent` x `latent` latents (float32)."""
    from erasekit.testing import random_pipeline, random_sdxl_pipeline

    config = json.loads((ROOT / "tests" / "data" / CONFIGS[name]).read_text()) | {"sample_size": latent}
    pipe = random_sdxl_pipeline(config) if name == "sdxl" else random_pipeline(config, sd2=name == "sd21")
    pipe.save_pretrained(folder, safe_serialization=True)


def run_cell(folder: str, variant: str, device: str, dtype: str, steps: int, bank: int, esd_ddim: int, abo_ddim: int) -> dict:
    """One cell in this process: load, erase, measure."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.set_num_threads(2) if device == "cpu" else None
    from erasekit import erase, load_pipeline
    from erasekit.methods import get_method

    cuda = device.startswith("cuda")

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda opt, args, kwargs: stamps.append(now()))
    pipe = load_pipeline(folder, device=device, dtype=dtype)
    reset_peak_memory(cuda)
    method, _, flag = variant.partition("+")
    ddim = {"esd": esd_ddim, "abo": abo_ddim}
    start = now()
    if method == "ref-esd":
        from reference_esd import reference_esd

        reference_esd(pipe, "square", get_method("esd-x").make_config(steps=steps, batch_size=1, ddim_steps=esd_ddim))
    elif method == "ref-abo":
        from reference_abo import reference_abo

        reference_abo(pipe, "square", get_method("abo").make_config(steps=steps, batch_size=1, ddim_steps=abo_ddim), progress=False)
    elif method == "uce":
        erase(pipe, method="uce", concepts="square", progress=False)
    else:
        erase(pipe, method=method, concepts="square", progress=False, gradient_checkpointing=flag == "gc",
              steps=steps, batch_size=1, bank_trajectories=bank, ddim_steps=ddim[method[:3]])
    erase_s = now() - start
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"variant": variant, "dtype": dtype, "erase_s": round(erase_s, 3),
            "step_ms": round(1000 * median(gaps), 2) if gaps else None, "peak_gib": round(peak_memory_gib(cuda), 3)}


def device_meta(device: str) -> dict:
    import diffusers
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({platform.machine()}, 2 torch threads)"
    return {"device": name, "torch": torch.__version__, "diffusers": diffusers.__version__}


def table(rows: list[dict], model: str, gpu: bool) -> list[str]:
    """One model's rows: per dtype, each variant with its memory as a ratio to float32 and to the references."""
    unit = "peak GPU memory (GiB)" if gpu else "peak RSS (GiB)"
    lines = [f"| dtype | variant | step (ms) | erase (s) | {unit} | vs ref-esd | vs ref-abo | vs fp32 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    peak = {(r["dtype"], r["variant"]): r["peak_gib"] for r in rows}
    for r in rows:
        def ratio(key):
            return f"{r['peak_gib'] / peak[key]:.2f}x" if key in peak and key != (r["dtype"], r["variant"]) else "—"

        step = "—" if r["step_ms"] is None else f"{r['step_ms']:.1f}"
        lines.append(f"| {r['dtype']} | {r['variant']} | {step} | {r['erase_s']:.1f} | {r['peak_gib']:.2f} | "
                     f"{ratio((r['dtype'], 'ref-esd'))} | {ratio((r['dtype'], 'ref-abo'))} | {ratio(('fp32', r['variant']))} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU mode (default when no CUDA GPU is present)")
    parser.add_argument("--models", help="comma-separated: sd14, sd21, sdxl, tiny (default: the mode's)")
    parser.add_argument("--dtypes", help="comma-separated: fp32, fp16, bf16 (default: the mode's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, help="training steps per cell (default: the mode's)")
    add_output_flags(parser)
    args = parse_args_or_run_cell(parser, run_cell)
    if args is None:
        return

    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    mode = MODES["gpu" if gpu else "cpu"]
    device = "cuda" if gpu else "cpu"
    models = (args.models or mode["models"]).split(",")
    dtypes = (args.dtypes or mode["dtypes"]).split(",")
    variants = args.variants.split(",")
    unknown = [m for m in models if m not in CONFIGS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown model or variant: {', '.join(unknown)}")
    steps = args.steps or mode["steps"]
    fp32_models = [m for m in mode["fp32_models"].split(",") if m]
    meta = run_meta() | device_meta(device)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for model in models:
            folder, latent = Path(work) / model, mode["sdxl_latent" if model == "sdxl" else "latent"]
            print(f"building a random {model} pipeline at {latent}x{latent} latents", flush=True)
            build_model(model, latent, folder)
            model_dtypes = dtypes + (["fp32"] if model in fp32_models and "fp32" not in dtypes else [])
            for dtype in model_dtypes:
                for variant in variants:
                    cell = dict(folder=str(folder), variant=variant, device=device, dtype=dtype, steps=steps, bank=mode["bank"],
                                esd_ddim=mode["esd_ddim"], abo_ddim=mode["abo_ddim"])
                    rows.append({"model": model, "latent": latent, **in_own_process(__file__, cell, args.results_dir)})
                    print(json.dumps(rows[-1]), flush=True)

    title = f"Erasing from full-size SD UNets: time and peak memory ({'GPU' if gpu else 'CPU'})"
    lines = heading(title, meta) + [
        f"Device: {meta['device']}; torch {meta['torch']}, diffusers {meta['diffusers']}. Random weights, batch 1, {steps} training steps, teacher banks of {mode['bank']} trajectories, "
        f"DDIM steps: ESD {mode['esd_ddim']}, AbO {mode['abo_ddim']}. One run per cell, each in its own process; ratios are of peak memory.", "",
    ]
    for model in models:
        latent = mode["sdxl_latent" if model == "sdxl" else "latent"]
        lines += [f"## {model}, {latent}x{latent} latents ({8 * latent} px)", ""] + table([r for r in rows if r["model"] == model], model, gpu) + [""]
    write_results(args.results_dir, meta, rows, lines)


if __name__ == "__main__":
    main()
