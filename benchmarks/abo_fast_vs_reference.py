"""Benchmark: erasekit's fast AbO (teacher bank, student-only steps) against Algorithm 1 as written.

Run from the repository root:
    .venv/bin/python benchmarks/abo_fast_vs_reference.py
Its experiment is abo-fast-vs-reference (`python benchmarks/run.py abo-fast-vs-reference`). Each variant
runs in its own process (so peak RSS is its own), side by side:
  * built-in model, AbO erasing "circle" for --steps steps: the reference, and the fast path with
    several bank sizes (trajectories); wall time of training, peak RSS, erasure and preservation,
    each trained with --train-seeds seeds, so that the reference's own spread over seeds shows
    what "within noise" means;
  * a UNet of the real SD 1.4 config (random weights, 8x8 latents, a few steps): peak RSS of the
    reference (frozen copy held) and of the fast path (no copy).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from statistics import mean
from pathlib import Path

from common import add_output_flags, heading, run_meta, write_results

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sd14_pipeline():
    """A StableDiffusionPipeline whose UNet has the SD 1.4 config (random weights, 8x8 latents)."""
    from erasekit.testing import random_pipeline

    config = json.loads((ROOT / "tests" / "data" / "sd14_unet_config.json").read_text())
    return random_pipeline(config | {"sample_size": 8})


def run_one(variant: str, steps: int, bank: str, seeds: int, concept: str, extra: dict, train_seed: int = 0) -> dict:
    """Run one variant in this process; returns its measurements."""
    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline
    from erasekit.tasks.shapes import ShapesDetector, shapes_task
    from erasekit import Sampling
    from erasekit.evaluation.evaluate import evaluate
    from erasekit.methods.abo import Abo
    from reference_abo import reference_abo

    sd14 = variant.startswith("sd14")
    pipe = sd14_pipeline() if sd14 else load_pipeline("builtin")
    # Batch 1 for both: Algorithm 1 as written draws one x_t per step, along the erased trajectory.
    settings = {"trajectory": "erased"} | extra | dict(steps=steps, batch_size=1) | (dict(ddim_steps=4) if sd14 else {})
    if bank.isdigit():  # "auto": AbO's default size; "-": the reference, which has no bank
        settings["bank_trajectories"] = int(bank)
    config = Abo.make_config(**settings)
    rss_loaded = peak_rss_mb()
    start = time.perf_counter()
    if variant.endswith("reference"):
        reference_abo(pipe, concept, config, seed=train_seed, progress=False)
    else:
        erase(pipe, method="abo", concepts=concept, seed=train_seed, progress=False, **settings)
    seconds = time.perf_counter() - start
    result = {"variant": variant, "bank": bank, "bank_trajectories": None if variant.endswith("reference") else config.bank_size(), "steps": steps, "train_seed": train_seed,
              "train_seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_load_mb": round(rss_loaded, 1)}
    if not sd14:
        evaluation = evaluate(load_pipeline("builtin"), pipe, shapes_task(concept, "target,related"), None, ShapesDetector(),
                              sampling=Sampling(seeds=list(range(seeds))), reference=None, progress=False)
        target, related = evaluation.suites["target"], evaluation.suites["related"]
        result.update(target_rate_base=target.detected_base, target_rate=target.detected, agreement_base=related.alignment_base,
                      agreement=related.alignment, ssim_other=related.ssim)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--banks", default="auto,4,16,32", help="bank sizes (trajectories) of the fast path; auto: AbO's default size")
    parser.add_argument("--train-seeds", type=int, default=3, help="training seeds per variant on the built-in model")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt in the erasure evaluation")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--sd14-steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an AbO setting for every variant, e.g. --set warmup=0 (numbers are parsed as JSON)")
    add_output_flags(parser)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--bank", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--train-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from erasekit.methods.base import DRAWS_PER_TRAJECTORY, parse_settings  # parse_settings: the CLI's own --set reading

    extra = parse_settings(args.set)
    if args.one:
        steps = args.sd14_steps if args.one.startswith("sd14") else args.steps
        print(json.dumps(run_one(args.one, steps, args.bank, args.seeds, args.concept, extra, args.train_seed)))
        return

    variants = [("reference", "-")] + [("fast", k.strip()) for k in args.banks.split(",")]
    # Seed by seed, every variant in turn: the machine's speed drifts over a run, and interleaving
    # spreads the drift over all variants instead of biasing the ratio between them.
    jobs = [(v, b, seed) for seed in range(args.train_seeds) for v, b in variants] + [("sd14-reference", "-", 0), ("sd14-fast", "2", 0)]
    rows = []
    for variant, bank, seed in jobs:
        cmd = [sys.executable, __file__, "--one", variant, "--bank", bank, "--steps", str(args.steps), "--train-seed", str(seed),
               "--seeds", str(args.seeds), "--concept", args.concept, "--sd14-steps", str(args.sd14_steps),
               "--results-dir", str(args.results_dir)]
        cmd += [f"--set={pair}" for pair in args.set]
        print("running", variant, bank, "seed", seed, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)

    def of(variant, bank):
        return [r for r in rows if r["variant"] == variant and r["bank"] == bank]

    ref_seconds = mean([r["train_seconds"] for r in of("reference", "-")])
    sd_ref, sd_fast = of("sd14-reference", "-")[0], of("sd14-fast", "2")[0]
    meta = run_meta()

    def spread(runs, value):
        """Mean over training seeds, then each seed's value: '18% (27, 9, 18)'."""
        values = [100 * value(r) for r in runs]
        return f"{mean(values):.0f}% ({', '.join(f'{v:.0f}' for v in values)})"

    base = of("reference", "-")[0]
    lines = heading("AbO: fast path vs Algorithm 1 as written (built-in model)", meta) + [
        f"Erasing '{args.concept}', {args.steps} steps of batch 1, settings {extra or 'defaults'} (x_t along the erased trajectory, as "
        f"Algorithm 1 draws it), training seeds 0..{args.train_seeds - 1}: means, then each seed's value in brackets. "
        f"Base model: target detected {100 * base['target_rate_base']:.0f}%, shape / colour agreement on other prompts "
        f"{100 * base['agreement_base']['shape']:.0f}/{100 * base['agreement_base']['colour']:.0f}%. "
        "Speed-up and memory are ratios against the reference, in this one run.", "",
        "| variant | bank trajectories | train time (s) | speed-up | peak RSS (MB) | target detected | shape agreement, other prompts | colour agreement, other prompts | SSIM to base, other prompts |",
        "|---|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for variant, bank in variants:
        runs = of(variant, bank)
        trajectories = {"-": "—", "auto": f"{runs[0]['bank_trajectories']} (default: one per {DRAWS_PER_TRAJECTORY} draws)"}.get(bank, bank)
        seconds = mean([r["train_seconds"] for r in runs])
        each = ", ".join(f"{r['train_seconds']:.0f}" for r in runs)
        lines.append(
            f"| {variant} | {trajectories} | {seconds:.1f} ({each}) | {ref_seconds / seconds:.1f}x | {max(r['peak_rss_mb'] for r in runs):.0f} | "
            f"{spread(runs, lambda r: r['target_rate'])} | {spread(runs, lambda r: r['agreement']['shape'])} | "
            f"{spread(runs, lambda r: r['agreement']['colour'])} | {mean([r['ssim_other'] for r in runs]):.3f} |"
        )
    lines += [
        "", f"## Peak memory on the SD 1.4 UNet config (random weights, 8x8 latents, {args.sd14_steps} steps)", "",
        "| variant | peak RSS (MB) | RSS after building the model (MB) |", "|---|---:|---:|",
        f"| reference (frozen copy held) | {sd_ref['peak_rss_mb']:.0f} | {sd_ref['rss_after_load_mb']:.0f} |",
        f"| fast path (no copy) | {sd_fast['peak_rss_mb']:.0f} | {sd_fast['rss_after_load_mb']:.0f} |",
        "", f"Fast / reference peak RSS: **{sd_fast['peak_rss_mb'] / sd_ref['peak_rss_mb']:.2f}x**", "",
    ]
    write_results(args.results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
