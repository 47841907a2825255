"""Benchmark: exporting an erasure as a LoRA on SDXL's layers, the exact SVD against the randomised one.

Its experiment is lora-export (`python benchmarks/run.py lora-export`). The layers are those of SDXL's
UNet config (tests/data/sdxl_unet_config.json) that cross-attention methods change (attn2: to_q,
to_k, to_v, to_out.0: 70 attention layers, 280 weights), listed from the model built on the meta device (no weights).
Each layer's delta is synthetic: a rank-77 change (one per token position of the prompt, as UCE's
is) plus a faint full-rank residue (1e-3 of its norm, as a trained change has). For one layer of
each distinct shape, the script times the exact float64 SVD (torch.linalg.svd: what export did
before) and erasekit's factorisation (lora.Spectrum: a randomised SVD of the ranks that may be
asked), and compares the rank each chooses at lora.TOLERANCE and the relative error at that rank.
The whole model's time is each shape's time times its count of layers: an extrapolation from one
layer per shape, said as such.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from common import add_output_flags, heading, run_meta, write_results

ROOT = Path(__file__).resolve().parent.parent


def attn2_shapes() -> Counter:
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = json.loads((ROOT / "tests" / "data" / "sdxl_unet_config.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return Counter(tuple(p.shape) for n, p in unet.named_parameters() if ".attn2." in n and n.endswith("weight") and p.dim() == 2 and p.dtype == torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--change-rank", type=int, default=77)
    add_output_flags(parser)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit.lora import MAX_RANK, TOLERANCE, Spectrum

    rows = []
    for (out, inp), count in sorted(attn2_shapes().items()):
        g = torch.Generator().manual_seed(out + inp)
        change = torch.randn(out, args.change_rank, generator=g) @ torch.randn(args.change_rank, inp, generator=g)
        delta = change + 1e-3 * change.norm() / (out * inp) ** 0.5 * torch.randn(out, inp, generator=g)
        started = time.perf_counter()
        U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
        exact_s = time.perf_counter() - started
        left = S.square().sum() - S.square().cumsum(0)
        exact_rank = min(int((left <= TOLERANCE**2 * S.square().sum()).nonzero()[0]) + 1, MAX_RANK)
        started = time.perf_counter()
        spectrum = Spectrum.of(delta, MAX_RANK)
        fast_s = time.perf_counter() - started
        fast_rank = min(spectrum.rank_within(TOLERANCE), MAX_RANK)
        up, down, error = spectrum.factors(fast_rank)
        exact_error = (left[exact_rank - 1] / S.square().sum()).sqrt().item()
        rows.append({"shape": [out, inp], "layers": count, "exact_s": exact_s, "randomised_s": fast_s, "exact_rank": exact_rank,
                     "randomised_rank": fast_rank, "exact_error": exact_error, "randomised_error": error,
                     "factors_vs_exact": ((up.double() @ down.double() - (U[:, :fast_rank] * S[:fast_rank]) @ Vh[:fast_rank]).norm()
                                          / delta.double().norm()).item()})
        print(rows[-1], flush=True)
    write_table(rows, run_meta(), args)


def write_table(rows, meta, args) -> None:
    total_exact = sum(r["exact_s"] * r["layers"] for r in rows)
    total_fast = sum(r["randomised_s"] * r["layers"] for r in rows)
    lines = heading("Exporting a LoRA on SDXL's cross-attention layers: exact against randomised SVD", meta) + [
        f"Synthetic deltas: rank {args.change_rank} plus a full-rank residue of 1e-3 of the norm; one layer per shape timed, "
        f"{sum(r['layers'] for r in rows)} layers in all. Rank: the smallest within {100 * 0.01:.0f}% relative error. "
        "'Factors against exact': the distance of erasekit's factors from the exact truncated SVD at the same rank, relative to the delta.", "",
        "| layer shape | layers | exact SVD, s | randomised, s | speed-up | rank exact / randomised | error at it, exact / randomised | factors against exact |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['shape'][0]} x {r['shape'][1]} | {r['layers']} | {r['exact_s']:.2f} | {r['randomised_s']:.3f} | "
                     f"{r['exact_s'] / r['randomised_s']:.0f}x | {r['exact_rank']} / {r['randomised_rank']} | "
                     f"{r['exact_error']:.4f} / {r['randomised_error']:.4f} | {r['factors_vs_exact']:.1e} |")
    lines += ["", f"All {sum(r['layers'] for r in rows)} layers, extrapolated from one of each shape: exact {total_exact:.0f} s, "
              f"randomised {total_fast:.0f} s ({total_exact / total_fast:.0f}x faster)."]
    write_results(args.results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
