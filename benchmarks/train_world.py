"""Experiment: train a built-in world's model from nothing, and score what it draws.

Run from the repository root:
    .venv/bin/python benchmarks/train_world.py --denoiser dit --run runs/dit --results-dir /tmp/train-dit
Its experiment is builtin-dit (`python benchmarks/run.py builtin-dit`).

It runs `erasekit shapes train` (resuming `--run` where an earlier call stopped, so a run cut short
loses no steps), then `erasekit shapes score` on the pipeline it wrote: every shape x colour x
texture prompt, two seeds each, judged by the shipped classifier. The training time is the sum over
the calls that trained it, from the run's own log. Copy `--run`/pipeline into the package to ship it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from common import add_output_flags, heading, run_meta, write_results

BARS = {"shape": 0.9, "colour": 0.9, "texture": 0.8}  # the shapes world's quality bars


def training_seconds(log: Path, phase: str) -> tuple[float, int]:
    """Seconds the run spent up to its last logged step of `phase`, summed over the calls that trained it
    (each call's clock starts at zero), and that step."""
    total, last_time, step = 0.0, 0.0, 0
    for row in csv.reader(log.open()):
        seconds = float(row[2])
        if seconds < last_time:  # a new call: bank the one before
            total += last_time
        last_time = seconds
        if row[0] == phase:
            step = int(row[1])
    return total + last_time, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--denoiser", choices=("unet", "dit"), default="dit")
    parser.add_argument("--run", type=Path, required=True, help="the training run's folder (resumed when it exists)")
    parser.add_argument("--steps", type=int, default=7200, help="denoiser training steps")
    parser.add_argument("--seeds", type=int, default=2, help="scoring seeds per prompt")
    add_output_flags(parser)
    args = parser.parse_args()
    meta = run_meta()
    erasekit = [sys.executable, "-m", "erasekit"]
    subprocess.run(erasekit + ["shapes", "train", "--denoiser", args.denoiser, "--steps", str(args.steps), "--out", str(args.run)], check=True)
    pipeline = args.run / "pipeline"
    scored = subprocess.run(erasekit + ["shapes", "score", "--model", str(pipeline), "--seeds", str(args.seeds), "--json"],
                            check=True, capture_output=True, text=True)
    score = json.loads(scored.stdout)
    seconds, steps = training_seconds(args.run / "train_log.csv", "transformer" if args.denoiser == "dit" else "unet")
    row = {"denoiser": args.denoiser, "steps": steps, "train_seconds": round(seconds), "agreement": score["agreement"], "n_images": score["n_images"],
           "config": json.loads((args.run / "train_config.json").read_text())}
    passed = {a: score["agreement"][a] >= bar for a, bar in BARS.items()}
    lines = heading(f"Training the {args.denoiser} world from nothing, and its score", meta) + [
        f"{steps} steps in {seconds / 60:.0f} min on this machine's CPU (2 torch threads). Scored on {score['n_images']} images: every shape x colour x "
        f"texture prompt, {args.seeds} seeds, the shipped classifier's top-1 against the attribute the prompt names.", "",
        "| attribute | agreement | bar | met |", "|---|---:|---:|---|",
    ] + [f"| {a} | {100 * score['agreement'][a]:.1f}% | {100 * bar:.0f}% | {'yes' if passed[a] else 'no'} |" for a, bar in BARS.items()]
    write_results(args.results_dir, meta, [row], lines)


if __name__ == "__main__":
    main()
