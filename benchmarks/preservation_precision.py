"""Benchmark: the preservation bar on more images, and which images an erasure changes.

Run through its experiments (benchmarks/experiments/preservation-*.toml, tuning-*.toml):
    .venv/bin/python benchmarks/run.py preservation-square-abo
The shape-erasure table judges "other shapes kept" on 60 images (30 related prompts x 2 seeds), where
one image is 1.7 points. This script trains each of the experiment's runs (method, settings, training
seeds), evaluates it on --eval-seeds seeds per prompt, and lists every image whose shape the erasure
changed, beside the shapes classifier's confidence in the base model's image of the same prompt and
seed: it tells an erasure that breaks shapes from one that tips images the base model itself drew on
the edge. The points below the base come with a 95% bootstrap interval over the evaluation images (and,
for a mean, the training seeds): a bar a few points wide is read against it.
"""

from __future__ import annotations

import argparse
from collections import Counter
from statistics import mean

import numpy as np
from common import add_output_flags, heading, load_runs, run_meta, write_results

from erasekit.evaluation.statistics import points_below_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--model", default="builtin", help="builtin, or a pipeline folder of the shapes world")
    parser.add_argument("--eval-seeds", type=int, default=6, help="seeds per prompt: 0 .. N-1, or from --first-eval-seed")
    parser.add_argument("--first-eval-seed", type=int, default=0,
                        help="start the evaluation seeds here instead (held-out images for settings chosen on seeds 0 .. N-1)")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit import Sampling, erase, load_pipeline
    from erasekit.evaluation.evaluate import evaluate, seeds_of
    from erasekit.shapes.world import ATTRIBUTES
    from erasekit.tasks.shapes import ShapesDetector, attribute_of, shapes_task

    attribute, _ = attribute_of(args.concept)
    seeds = list(range(args.first_eval_seed, args.first_eval_seed + args.eval_seeds))
    suites = shapes_task(args.concept, "target,related").suites
    wanted = [p.wanted[attribute] for p in suites["related"] for _ in seeds_of(p, seeds)]  # evaluate's job order
    base, detector = load_pipeline(args.model), ShapesDetector()
    base_images, base_confidence, base_labels = None, None, None
    rows = []
    for method, settings, train_seed in load_runs(args.experiment):
        print("running", method, settings or "defaults", "training seed", train_seed, flush=True)
        erased = load_pipeline(args.model)
        erasure = erase(erased, method=method, concepts=args.concept, seed=train_seed, progress=False, **settings)
        evaluation = evaluate(base, erased, shapes_task(args.concept), suites, detector, sampling=Sampling(seeds=seeds), reference=None,
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
    model = "" if args.model == "builtin" else f" from {args.model}"
    lines = heading(f"Preservation of the other values when erasing '{args.concept}'{model}, on {args.eval_seeds} seeds per prompt", meta) + [
        f"Related prompts (another value of the attribute named), evaluation seeds {seeds[0]}..{seeds[-1]}: {n} images per model; "
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
    write_results(args.results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
