"""Benchmark: the preservation bar on more images, and which images an erasure changes.

Run from the repository root:
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 6
The shape-erasure table judges "other shapes kept" on 60 images (30 related prompts x 2 seeds), where
one image is 1.7 points. This script trains AbO's, ESD-x's and ESD-u's defaults with several
training seeds, evaluates them on --eval-seeds seeds per prompt, and lists every image whose shape the
erasure changed, beside the shapes classifier's confidence in the base model's image of the same prompt
and seed: it tells an erasure that breaks shapes from one that tips images the base model itself drew
on the edge. The points below the base come with a 95% bootstrap interval over the evaluation images
(and, for a mean, the training seeds): a bar a few points wide is read against it. Results go to
benchmarks/results/preservation_<concept>.{md,json}.

With --sweep NAME it trains each of SWEEPS[NAME]'s settings instead (training seeds --train-seeds), to show
where they sit between erasing and keeping (preservation_<concept>_sweep_<name>.*): `abo` changes AbO's
defaults one at a time, `esd` tries the negative guidance η and the steps of ESD-x and ESD-u, `esd-u` goes
on with ESD-u, `esd-u-bank` tries its teacher bank and learning rate, `abo-bank` AbO's bank and
`abo-schedule` its learning rate and steps, `abo-bank-check` AbO's banks of 24 and 48 on held-out seeds, and
`abo-defaults` AbO's defaults alone (for the other shapes), `esd-defaults` ESD-x's and ESD-u's:
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 6 --sweep abo
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 12 --sweep esd --train-seeds 0,1
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 12 --sweep esd-u --train-seeds 0,1
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 12 --sweep esd-u-bank --train-seeds 0,1
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 12 --sweep abo-bank --train-seeds 0,1,2
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 12 --sweep abo-schedule --train-seeds 0,1,2
    .venv/bin/python benchmarks/preservation_precision.py --concept square --eval-seeds 12 --first-eval-seed 12 --sweep abo-bank-check --train-seeds 0,1,2
    .venv/bin/python benchmarks/preservation_precision.py --concept circle --eval-seeds 12 --sweep abo-defaults --train-seeds 0,1,2
    .venv/bin/python benchmarks/preservation_precision.py --concept circle --eval-seeds 12 --sweep esd-defaults --train-seeds 0
"""

from __future__ import annotations

import argparse
from collections import Counter
from statistics import mean

import numpy as np
from common import ESD_U_FAST, heading, run_meta, write_results

from erasekit.evaluation.statistics import points_below_interval

# (method, settings, training seeds); settings not given are the method's defaults.
RUNS = [("abo", {}, (0, 1, 2)), ("esd-x", {}, (0, 1)), ("esd-u", {}, (0, 1))]
SWEEPS = {
    # AbO's settings that move erasure against preservation, one at a time from the defaults: λ, the erasing
    # instruction's scale g and percentile κ, δ's step window, the trained parameters, and the implicit δ.
    "abo": [("abo", s) for s in ({}, {"lam": 300.0}, {"erase_scale": 7.5}, {"erase_scale": 11.0}, {"erase_scale": 12.5},
                                 {"kappa": 0.3}, {"kappa": 0.7}, {"window_end": 22}, {"parameters": "attn2-kv"}, {"delta": "implicit"})],
    # ESD's strength: η and steps, written out in full because they are what sets its defaults (and ESD-u's
    # lr and bank, which changed after these sweeps).
    "esd": [("esd-x", {"eta": 4.0, "steps": 400}), ("esd-x", {"eta": 5.0, "steps": 400}), ("esd-x", {"eta": 3.0, "steps": 800}),
            ("esd-u", {"eta": 6.0, "steps": 400} | ESD_U_FAST)],
    # ESD-u left 14 / 32% of squares with η 6 in that sweep: stronger η, or more steps.
    "esd-u": [("esd-u", {"eta": 10.0, "steps": 400} | ESD_U_FAST),
              ("esd-u", {"eta": 6.0, "steps": 800} | ESD_U_FAST)],
    # Neither did; the training seeds' spread came from the bank. Its default since: lr 5e-5, 800 steps, 64
    # trajectories, η 6. Beside it, a larger bank alone, and the slower schedule over the old bank:
    "esd-u-bank": [("esd-u", {"eta": 6.0, "steps": 400, "lr": 2e-4, "bank_trajectories": 128}),
                   ("esd-u", {"eta": 6.0, "steps": 800, "lr": 5e-5, "bank_trajectories": 32})],
    # Does the bank matter for AbO too? Its default holds 24 trajectories (one per 25 of its 600 draws).
    "abo-bank": [("abo", {"bank_trajectories": 48}), ("abo", {"bank_trajectories": 64})],
    # ESD-u found its balance in a slower schedule; AbO's default is lr 3e-4 for 150 steps (bank: one trajectory per 25 draws).
    "abo-schedule": [("abo", {"lr": 1e-4, "steps": 450}), ("abo", {"lr": 1.5e-4, "steps": 300})],
    # The bank of 48 met both bars with every training seed on evaluation seeds 0-11, where it was picked: it and the
    # default's 24 on other seeds (--first-eval-seed).
    "abo-bank-check": [("abo", {"bank_trajectories": 24}), ("abo", {"bank_trajectories": 48})],
    # AbO's defaults alone, to read its bars on the world's other shapes (--concept circle, triangle...): is square typical?
    "abo-defaults": [("abo", {})],
    # and ESD-x's and ESD-u's beside it, where AbO's defaults left a shape standing
    "esd-defaults": [("esd-x", {}), ("esd-u", {})],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--eval-seeds", type=int, default=6, help="seeds per prompt: 0 .. N-1, or from --first-eval-seed")
    parser.add_argument("--first-eval-seed", type=int, default=0,
                        help="start the evaluation seeds here instead (held-out images for settings chosen on seeds 0 .. N-1)")
    parser.add_argument("--sweep", nargs="?", const="abo", choices=sorted(SWEEPS), help="train SWEEPS[NAME]'s settings, not RUNS")
    parser.add_argument("--train-seeds", default="0", help="training seeds of a sweep, e.g. 0,1")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline
    from erasekit.evaluation.detectors import ShapesDetector
    from erasekit.evaluation.evaluate import evaluate, seeds_of
    from erasekit.evaluation.prompts import load_prompts
    from erasekit.evaluation.shapes import attribute_of
    from erasekit.shapes.world import ATTRIBUTES

    attribute, _ = attribute_of(args.concept)
    seeds = list(range(args.first_eval_seed, args.first_eval_seed + args.eval_seeds))
    suites = load_prompts("target,related", args.concept)
    wanted = [p.wanted[attribute] for p in suites["related"] for _ in seeds_of(p, seeds)]  # evaluate's job order
    base, detector = load_pipeline("builtin"), ShapesDetector()
    base_images, base_confidence, base_labels = None, None, None
    rows = []
    sweep_seeds = tuple(int(s) for s in args.train_seeds.split(","))
    runs = [(method, settings, sweep_seeds) for method, settings in SWEEPS[args.sweep]] if args.sweep else RUNS
    for method, settings, train_seeds in runs:
        for train_seed in train_seeds:
            print("running", method, settings or "defaults", "training seed", train_seed, flush=True)
            erased = load_pipeline("builtin")
            erasure = erase(erased, method=method, concepts=args.concept, seed=train_seed, progress=False, **settings)
            evaluation = evaluate(base, erased, args.concept, suites, detector, seeds=seeds, reference=None,
                                  base_images=base_images, progress=True)
            jobs = evaluation.jobs["related"]
            if base_images is None:
                base_images = {name: evaluation.images[name]["base"] for name in suites}
                prediction = detector.classifier.predict(base_images["related"])
                base_labels = prediction.labels[attribute]
                # the probability the classifier gives the shape the prompt names
                base_confidence = [float(prediction.probs[attribute][i, ATTRIBUTES[attribute].index(w)]) for i, w in enumerate(wanted)]
            labels = detector.predict(evaluation.images["related"]["erased"])[attribute]
            changed = [
                {"prompt": jobs[i][0], "seed": jobs[i][1], "base": base_labels[i], "erased": labels[i],
                 "base_confidence": round(base_confidence[i], 3), "base_rank": _rank(base_confidence, i)}
                for i in range(len(jobs)) if labels[i] != base_labels[i]
            ]
            related, target = evaluation.suites["related"], evaluation.suites["target"]
            rows.append({"method": method, "settings": settings, "resolved": erasure.metadata["hyperparameters"], "train_seed": train_seed, "eval_seeds": seeds,
                         "n_related": len(jobs), "n_target": len(evaluation.jobs["target"]), "target_base": target.detected_base, "target": target.detected, "target_drawn_as": target.counts,
                         "agreement_base": related.alignment_base[attribute], "agreement": related.alignment[attribute],
                         "ssim_related": related.ssim, "changed": changed})
            print(rows[-1], flush=True)
    write_table(rows, jobs, base_confidence, base_labels, wanted, args, run_meta())


def _rank(confidence: list[float], i: int) -> int:
    """1 = the base model's least confident image."""
    return 1 + sum(c < confidence[i] for c in confidence)


def _label(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items()) or "defaults"


def _lost(rows: list[dict], jobs: list, wanted: list[str]) -> np.ndarray:
    """The `lost` matrix of points_below_interval, from each row's changed images."""
    index = {(prompt, seed): i for i, (prompt, seed, *_) in enumerate(jobs)}
    lost = np.zeros((len(rows), len(jobs)), dtype=np.int8)
    for s, r in enumerate(rows):
        for c in r["changed"]:
            i = index[(c["prompt"], c["seed"])]
            lost[s, i] = (c["base"] == wanted[i]) - (c["erased"] == wanted[i])
    return lost


def _points_below(rows: list[dict], jobs: list, wanted: list[str]) -> str:
    low, high = points_below_interval(_lost(rows, jobs, wanted))
    return f"{100 * mean(r['agreement_base'] - r['agreement'] for r in rows):.1f} ({low:.1f} to {high:.1f})"


def _drawn_as(row: dict) -> str:
    """What the classifier saw in the erased model's target images, most often first."""
    return ", ".join(f"{k} {v}" for k, v in Counter(row["target_drawn_as"]).most_common())


def write_table(rows, jobs, base_confidence, base_labels, wanted, args, meta) -> None:
    n, seeds = len(wanted), rows[0]["eval_seeds"]
    base_right = sum(b == w for b, w in zip(base_labels, wanted))
    lines = heading(f"Preservation of other shapes when erasing '{args.concept}', on {args.eval_seeds} seeds per prompt", meta) + [
        f"Related prompts (another shape named), evaluation seeds {seeds[0]}..{seeds[-1]}: {n} images per model; "
        f"the base model draws {base_right} of them right ({100 * base_right / n:.1f}%); target prompts: {rows[0]['n_target']} images. "
        "'Changed' counts images whose predicted shape differs from the base model's image of the same prompt and seed; "
        "'among the base's 10 least confident' counts how many of those the classifier was least sure of in the base model.", "",
        "| method | settings (others: defaults) | training seed | target detected, base → erased | erased target images drawn as | other shapes drawn right, base → erased | points below base (95% interval) | changed images | among the base's 10 least confident | SSIM to base, related |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_label(r['settings'])} | {r['train_seed']} | {100 * r['target_base']:.0f}% → {100 * r['target']:.1f}% | "
            f"{_drawn_as(r)} | {100 * r['agreement_base']:.1f}% → {100 * r['agreement']:.1f}% | {_points_below([r], jobs, wanted)} | "
            f"{len(r['changed'])} | {sum(c['base_rank'] <= 10 for c in r['changed'])} | {r['ssim_related']:.3f} |"
        )
    for method, label in dict.fromkeys((r["method"], _label(r["settings"])) for r in rows):
        of = [r for r in rows if (r["method"], _label(r["settings"])) == (method, label)]
        if len(of) < 2:
            continue
        lines.append(f"| {method}, mean | {label} | | | | {100 * mean(r['agreement_base'] for r in of):.1f}% → "
                     f"{100 * mean(r['agreement'] for r in of):.1f}% | {_points_below(of, jobs, wanted)} | | | |")
    lines += ["", "## The images each erasure changed", "",
              "| method | settings | training seed | prompt / seed | base → erased | base confidence (rank, 1 = least sure) |", "|---|---|---:|---|---|---|"]
    for r in rows:
        for c in sorted(r["changed"], key=lambda c: c["base_rank"]):
            lines.append(f"| {r['method']} | {_label(r['settings'])} | {r['train_seed']} | {c['prompt']} / {c['seed']} | {c['base']} → {c['erased']} | "
                         f"{c['base_confidence']:.2f} ({c['base_rank']}) |")
    # "defaults" changes meaning when a default does: the settings each row actually trained with
    lines += ["", "## Settings each row trained with", "", "| method | settings | resolved |", "|---|---|---|"]
    for (method, label), r in {(r["method"], _label(r["settings"])): r for r in rows}.items():
        lines.append(f"| {method} | {label} | {', '.join(f'{k} {v}' for k, v in r['resolved'].items())} |")
    order = sorted(range(n), key=lambda i: base_confidence[i])[:10]
    lines += ["", "## The base model's 10 least confident images", "", "| rank | prompt / seed | base drew | confidence |", "|---:|---|---|---:|"]
    lines += [f"| {k + 1} | {jobs[i][0]} / {jobs[i][1]} | {base_labels[i]} | {base_confidence[i]:.2f} |" for k, i in enumerate(order)]
    held_out = f"_seeds_{seeds[0]}-{seeds[-1]}" if seeds[0] else ""
    write_results(f"preservation_{args.concept}" + (f"_sweep_{args.sweep}" if args.sweep else "") + held_out, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
