"""Benchmark: ESD-x, ESD-u and AbO erasing a shape from the built-in model, over a few settings each.

Run from the repository root:
    .venv/bin/python benchmarks/shape_erasure.py --concept square
Every configuration below is one cell of `erasekit bench` (trained with seed 0, then evaluated on the
target / related / unrelated prompts from the same seeds as the base model), cached under --out/cells,
so a re-run only computes new configurations. All rows, with their settings, go to
benchmarks/results/shape_erasure_<concept>.{md,json} with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (method, settings), every setting that differs from today's defaults spelled out: first each
# method's earlier defaults (ESD: 200 steps, batch 1, η 1; AbO: 50 steps, batch 1, warm-up 5), then
# what was tried to reach the bar (target <= 10%). Today's defaults came out of this table.
# The last AbO entry is the one --replacements reruns with each replacement concept.
ESD_BEFORE = {"steps": 200, "batch_size": 1, "eta": 1.0}
ABO_BEFORE = {"steps": 50, "batch_size": 1, "warmup": 5}
CONFIGS = [
    ("esd-x", ESD_BEFORE),
    ("esd-x", {"steps": 400, "batch_size": 4, "eta": 1.0}),
    ("esd-x", {"steps": 400, "batch_size": 4, "lr": 5e-4, "eta": 1.0}),
    ("esd-x", {"steps": 1000, "batch_size": 4, "eta": 1.0}),
    ("esd-x", {"steps": 400, "batch_size": 4, "eta": 3.0}),
    ("esd-u", ESD_BEFORE),
    ("esd-u", {"steps": 400, "batch_size": 4, "eta": 1.0}),
    ("esd-u", {"steps": 400, "batch_size": 4, "lr": 1e-3, "eta": 1.0}),
    ("esd-u", {"steps": 400, "batch_size": 4, "eta": 3.0}),
    ("esd-u", {"steps": 800, "batch_size": 4, "eta": 3.0}),
    ("esd-u", {"steps": 400, "batch_size": 4, "eta": 3.0, "lr": 5e-4}),
    ("esd-u", {"steps": 400, "batch_size": 4, "eta": 6.0}),
    ("abo", ABO_BEFORE),
    ("abo", ABO_BEFORE | {"warmup": 0}),
    ("abo", ABO_BEFORE | {"warmup": 0, "kappa": 0.0}),
    ("abo", {"warmup": 0, "steps": 100, "batch_size": 4}),
    ("abo", {"warmup": 0, "steps": 400, "batch_size": 4}),
    ("abo", {"warmup": 0, "kappa": 0.0, "steps": 400, "batch_size": 4}),
    ("abo", {"warmup": 0, "steps": 150, "batch_size": 4, "kappa": 0.9, "erase_scale": 30.0}),
    ("abo", {"warmup": 0, "steps": 150, "batch_size": 4}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--replacements", default="", help="comma-separated: also run the last AbO setting with each replacement")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default="runs/shape-erasure", help="cell cache")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit.evaluation.bench import Base, BenchSettings, run_cell
    from erasekit.evaluation.detectors import ShapesDetector

    settings = BenchSettings(seeds=tuple(int(s) for s in args.seeds.split(",")))
    configs = list(CONFIGS)
    last_abo = [s for m, s in CONFIGS if m == "abo"][-1]
    configs += [("abo", last_abo | {"replacement": r}) for r in args.replacements.split(",") if r]
    base, detector = Base.load("builtin"), ShapesDetector()
    rows = []
    for method, method_settings in configs:
        print("running", method, method_settings, flush=True)
        rows.append(run_cell(Path(args.out), method, args.concept, method_settings, settings, detector, base, progress=True))

    command = "python benchmarks/shape_erasure.py " + " ".join(sys.argv[1:])
    meta = {"command": command.strip(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, torch threads 2"}
    write_results(rows, meta, args.concept, settings)


def write_results(rows: list[dict], meta: dict, concept: str, settings) -> None:
    from erasekit.evaluation.bench import table_rows

    name = f"shape_erasure_{concept}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    header = ["method", "settings", "target detected, base → erased", "same-attribute prompts: alignment, base → erased",
              "unrelated prompts: alignment (erased)", "SSIM to base, related", "SSIM to base, unrelated", "train time"]
    lines = [f"# Erasing '{concept}' from the built-in model", "", f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; {meta['machine']}", "",
             f"Evaluation: seeds {list(settings.seeds)}, {settings.steps} DDIM steps, guidance {settings.guidance}; "
             "target = prompts naming the concept, related = other values of its attribute, unrelated = other attributes. "
             "Settings not shown are the method's defaults.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r, cells in zip(rows, table_rows(rows)):
        shown = ", ".join(f"{k}={v}" for k, v in r["method_settings"].items()) or "defaults"
        lines.append("| " + " | ".join([cells[0], shown, *cells[2:7], cells[8]]) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
