"""Benchmark: ESD-x, ESD-u and AbO erasing a shape from the built-in model, over a few settings each.

Run through its experiment (benchmarks/experiments/shape-erasure-square.toml):
    .venv/bin/python benchmarks/run.py shape-erasure-square
Every run of the experiment is one cell of `erasekit bench` (trained with its training seeds, then
evaluated on the target / related / unrelated prompts from the same seeds as the base model), cached
under --out/cells, so a re-run only computes new configurations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import add_output_flags, heading, load_runs, run_meta, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default="runs/shape-erasure", help="cell cache")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit.api import Sampling
    from erasekit.evaluation.bench import Base, BenchSettings, run_cell
    from erasekit.tasks.shapes import ShapesDetector, shapes_task

    seeds = tuple(int(s) for s in args.seeds.split(","))
    base, detector = Base.load("builtin"), ShapesDetector()
    rows = []
    for method, method_settings, train_seed in load_runs(args.experiment):
        print("running", method, method_settings, "training seed", train_seed, flush=True)
        settings = BenchSettings(sampling=Sampling(seeds=seeds), train_seed=train_seed)
        row = run_cell(Path(args.out), method, shapes_task(args.concept), method_settings, settings, detector, base, progress=True)
        rows.append(row | {"method_settings": method_settings, "train_seed": train_seed})  # as asked, not as cached

    write_table(rows, run_meta(), args.concept, settings, args.results_dir)


def write_table(rows: list[dict], meta: dict, concept: str, settings, results_dir) -> None:
    from erasekit.evaluation.bench import table_rows

    header = ["method", "settings", "training seed", "target detected, base → erased", "same-attribute prompts: alignment, base → erased",
              "unrelated prompts: alignment (erased)", "SSIM to base, related", "SSIM to base, unrelated", "train time"]
    lines = heading(f"Erasing '{concept}' from the built-in model", meta) + [
        f"Evaluation: seeds {list(settings.sampling.seeds)}, {settings.sampling.steps} DDIM steps, guidance {settings.sampling.guidance}; "
        "target = prompts naming the concept, related = other values of its attribute, unrelated = other attributes. "
        "Settings not shown are the method's defaults.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    for r, cells in zip(rows, table_rows(rows)):
        shown = ", ".join(f"{k}={v}" for k, v in r["method_settings"].items()) or "defaults"
        lines.append("| " + " | ".join([cells[0], shown, str(r["train_seed"]), *cells[2:7], cells[8]]) + " |")
    write_results(results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
