"""Benchmark: ESD-x, ESD-u and AbO erasing a shape from the built-in model, over a few settings each.

Run from the repository root:
    .venv/bin/python benchmarks/shape_erasure.py --concept square
Every configuration below is one cell of `erasekit bench` (trained with seed 0, some also with
seeds 1 and 2, then evaluated on the target / related / unrelated prompts from the same seeds as the
base model), cached under --out/cells, so a re-run only computes new configurations. All rows, with
their settings, go to benchmarks/results/shape_erasure_<concept>.{md,json} with the command that made them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ESD_U_FAST, heading, run_meta, write_results

# (method, settings), every setting that differs from today's defaults spelled out: first each
# method's earlier defaults (ESD: 200 steps, batch 1, η 1; AbO: 50 steps, batch 1, warm-up 5, x_t along
# the erased trajectory, λ 5), then what was tried to reach the bars (target <= 10%, other
# shapes within 5 points of the base model). Today's defaults came out of this table.
ESD_BEFORE = {"steps": 200, "batch_size": 1, "eta": 1.0}
# AbO's bank had 32 trajectories until 2026-11-25 (since then one per 25 draws: 24 for 150 steps of batch 4).
BANK32 = {"bank_trajectories": 32}
ABO_BEFORE = {"steps": 50, "batch_size": 1, "warmup": 5, "trajectory": "erased", "lam": 5.0} | BANK32
ABO_ERASED = {"warmup": 0, "trajectory": "erased", "lam": 5.0} | BANK32  # AbO's defaults of 2026-11-24: 150 steps, batch 4, no warm-up
ABO_CONCEPT = {"trajectory": "concept", "warmup": 0, "lam": 5.0} | BANK32  # AbO's defaults of the morning of 2026-11-25
CONFIGS = [
    # ESD's learning rate and step count were tuned on 2026-11-24 (this file's git history); these
    # rows keep its start, the paper's η with many steps, and the results.
    ("esd-x", ESD_BEFORE),
    ("esd-x", {"steps": 1000, "batch_size": 4, "eta": 1.0}),
    ("esd-x", {"steps": 400, "batch_size": 4, "eta": 3.0}),
    ("esd-u", {"steps": 400, "batch_size": 4, "eta": 3.0} | ESD_U_FAST),
    ("esd-u", {"steps": 400, "batch_size": 4, "eta": 6.0} | ESD_U_FAST),  # esd-u's default on the day of 2026-11-25
    ("esd-x", {"steps": 400, "batch_size": 4, "eta": 5.0}),  # esd-x's default since 2026-11-25 (η 3 left 12-18% on 132 images)
    # AbO's strength (steps, batch, κ, erase scale) was tuned on 2026-11-24: that table is in this
    # file's git history; these rows keep its start and its result.
    ("abo", ABO_BEFORE),
    ("abo", ABO_ERASED),
    # Other shapes stayed at 63-83% along the erased trajectory; what was tried for them:
    ("abo", ABO_ERASED | {"parameters": "attn2-kv"}),
    ("abo", ABO_ERASED | {"lam": 20.0}),
    ("abo", ABO_ERASED | {"lr": 1e-4, "steps": 450}),
    ("abo", ABO_ERASED | {"warmup": 5}),
    ("abo", ABO_ERASED | {"warmup": 10}),
    # x_t along the concept's own trajectory, as ESD draws it (Algorithm 1 draws it along the erased one):
    ("abo", ABO_CONCEPT),
    ("abo", ABO_CONCEPT | {"steps": 100}),
    ("abo", ABO_CONCEPT | {"kappa": 0.0}),
    ("abo", ABO_CONCEPT | {"warmup": 10}),
    ("abo", ABO_CONCEPT | {"warmup": 5}),
    # Other shapes still at 85-95% along it; what was tried for them (trajectory "auto" is "concept" here):
    ("abo", {"lam": 5.0, "parameters": "attn2-kv"} | BANK32),
    ("abo", {"lam": 5.0, "erase_scale": 7.5} | BANK32),
    ("abo", {"lam": 5.0, "bank_trajectories": 128}),
    ("abo", {"lam": 20.0} | BANK32),
    ("abo", {"lam": 50.0} | BANK32),
    ("abo", BANK32),  # λ 100 with the earlier bank of 32
    ("abo", {"lam": 200.0} | BANK32),
    ("abo", {}),  # today's default: a bank of one trajectory per 25 draws (24 here)
]
# Run again with other training seeds, to show how much one training run's numbers move.
MORE_SEEDS = [
    ((1,), "esd-x", {"steps": 400, "batch_size": 4, "eta": 3.0}),
    ((1,), "esd-x", {"steps": 400, "batch_size": 4, "eta": 5.0}),
    ((1,), "esd-u", {"steps": 400, "batch_size": 4, "eta": 6.0} | ESD_U_FAST),
    ((1,), "abo", ABO_ERASED),
    ((1, 2), "abo", ABO_CONCEPT),
    ((1,), "abo", ABO_CONCEPT | {"kappa": 0.0}),
    ((1,), "abo", ABO_CONCEPT | {"warmup": 10}),
    ((1,), "abo", ABO_CONCEPT | {"warmup": 5}),
    ((1,), "abo", {"lam": 5.0, "parameters": "attn2-kv"} | BANK32),
    ((1,), "abo", {"lam": 5.0, "erase_scale": 7.5} | BANK32),
    ((1, 2), "abo", {"lam": 5.0, "bank_trajectories": 128}),
    ((1, 2), "abo", {"lam": 20.0} | BANK32),
    ((1, 2), "abo", {"lam": 50.0} | BANK32),
    ((1, 2), "abo", BANK32),
    ((1, 2), "abo", {"lam": 200.0} | BANK32),
    ((1, 2), "abo", {}),
]
# --replacements reruns these with each replacement concept; the last is today's default ("auto": the
# erased trajectory with a replacement).
REPLACED = [("abo", ABO_ERASED), ("abo", ABO_ERASED | {"warmup": 5}), ("abo", ABO_CONCEPT | {"warmup": 5}), ("abo", BANK32), ("abo", {})]


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

    seeds = tuple(int(s) for s in args.seeds.split(","))
    runs = [(0, m, s) for m, s in CONFIGS] + [(seed, m, s) for train_seeds, m, s in MORE_SEEDS for seed in train_seeds]
    runs += [(0, m, s | {"replacement": r}) for m, s in REPLACED for r in args.replacements.split(",") if r]
    base, detector = Base.load("builtin"), ShapesDetector()
    rows = []
    for train_seed, method, method_settings in runs:
        print("running", method, method_settings, "training seed", train_seed, flush=True)
        settings = BenchSettings(seeds=seeds, train_seed=train_seed)
        row = run_cell(Path(args.out), method, args.concept, method_settings, settings, detector, base, progress=True)
        rows.append(row | {"method_settings": method_settings, "train_seed": train_seed})  # as asked, not as cached

    write_table(rows, run_meta(), args.concept, settings)


def write_table(rows: list[dict], meta: dict, concept: str, settings) -> None:
    from erasekit.evaluation.bench import table_rows

    header = ["method", "settings", "training seed", "target detected, base → erased", "same-attribute prompts: alignment, base → erased",
              "unrelated prompts: alignment (erased)", "SSIM to base, related", "SSIM to base, unrelated", "train time"]
    lines = heading(f"Erasing '{concept}' from the built-in model", meta) + [
        f"Evaluation: seeds {list(settings.seeds)}, {settings.steps} DDIM steps, guidance {settings.guidance}; "
        "target = prompts naming the concept, related = other values of its attribute, unrelated = other attributes. "
        "Settings not shown are the method's defaults.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    for r, cells in zip(rows, table_rows(rows)):
        shown = ", ".join(f"{k}={v}" for k, v in r["method_settings"].items()) or "defaults"
        lines.append("| " + " | ".join([cells[0], shown, str(r["train_seed"]), *cells[2:7], cells[8]]) + " |")
    write_results(f"shape_erasure_{concept}", meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
