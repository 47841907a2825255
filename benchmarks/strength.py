"""Benchmark: what each run leaves of every concept it erases, how long it trained, and what it cost.

Its experiments run it (`python benchmarks/run.py strength-early-stopping`). For each training seed
of the experiment's runs, `erasekit bench` (erasekit.evaluation.bench.bench_cells) erases each
concept and evaluates the target and related prompts on the evaluation seeds: the share of target
images the shapes classifier takes for the concept, and the collateral robustness.py reports
(alignment with the concept's attribute on related prompts, same-seed agreement, SSIM, FID). The
steps each erasure trained come from its file's metadata, so a run with early stopping shows where
it stopped. Cells are cached in the results folder's cells/ (not committed): an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import add_output_flags, heading, load_runs, run_meta, seed_range, write_results
from robustness import by_concept_and_run, collateral, for_concept, in_training_order, label

# The concepts of the built-in world, attribute by attribute.
CONCEPTS = "circle,square,triangle,star,hexagon,cross,red,yellow,green,cyan,blue,purple,solid,striped,dotted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default=CONCEPTS)
    parser.add_argument("--seeds", default="0-3", help="evaluation seeds per prompt (first-last)")
    parser.add_argument("--bar", type=float, default=0.10, help="the share of target images that may still show the concept")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit.api import Sampling
    from erasekit.erasure_file import read_metadata
    from erasekit.evaluation.bench import BenchSettings, bench_cells, check_bench
    from erasekit.io import atomic_save_image

    concepts = args.concepts.split(",")
    rows = []
    for train_seed, method, method_settings in sorted(((seed, m, s) for m, s, seed in load_runs(args.experiment)), key=lambda r: r[0]):
        for concept in concepts:
            per_method = {method: for_concept(method_settings, concept)}
            settings = check_bench([method], [concept], BenchSettings(prompts="target,related", sampling=Sampling(seeds=seed_range(args.seeds)),
                                                                      train_seed=train_seed), per_method)
            cell = next(bench_cells(args.results_dir, [method], [concept], settings, per_method, progress=True))
            target = cell["evaluation"]["suites"]["target"]
            meta = read_metadata(Path(args.results_dir) / "cells" / cell["cell"] / "erasure.safetensors")
            rows.append({"method": cell["method"], "settings": method_settings, "train_seed": train_seed, "concept": cell["concept"],
                         "images": target["n_images"], "left_base": target["detected_base"], "left": target["detected"],
                         "steps_trained": meta["steps_trained"], "train_s": cell["train_s"], "collateral": collateral(cell),
                         "cell": cell["cell"], "base_cell": cell["base_cell"]})
            print(label(rows[-1]), rows[-1]["concept"], train_seed, f"left {rows[-1]['left']:.2f}", f"steps {rows[-1]['steps_trained']}", flush=True)
            write_results(args.results_dir, run_meta(), in_training_order(rows, concepts), table(rows, args))  # after every cell: an interrupted run leaves what it finished
    atomic_save_image(samples(rows, args.results_dir / "cells"), args.results_dir / "samples.png")


def samples(rows: list[dict], cells: Path):
    """One picture: per concept (a row), seed 0 of three target prompts on the base model, then on each run (training seed 0)."""
    from PIL import Image

    from erasekit.images import make_grid

    runs = list(dict.fromkeys(label(r) for r in rows))
    images, concepts = [], list(dict.fromkeys(r["concept"] for r in rows))
    for concept in concepts:
        first = {label(r): r for r in rows if r["concept"] == concept and r["train_seed"] == 0}
        folders = [cells / first[runs[0]]["base_cell"]] + [cells / first[run]["cell"] for run in runs]
        images += [Image.open(folder / "samples" / f"target-{k}.png").convert("RGB") for folder in folders for k in range(3)]
    columns = ["base", "", ""] + [x for i in range(len(runs)) for x in (f"run {i + 1}", "", "")]
    return make_grid(images, columns=len(columns), row_labels=concepts, column_labels=columns, scale=2)


def table(rows: list[dict], args) -> list[str]:
    """Per concept and run, mean over training seeds: left, steps, erase time and collateral; then each run's concepts over the bar."""
    meta = run_meta()
    lines = heading("What each run leaves of every concept", meta) + [
        f"Built-in model; evaluation seeds {args.seeds} per target and related prompt. Left: share of target images the shapes classifier "
        "takes for the concept (base model in brackets). Alignment: share of related images showing the attribute value their prompt "
        "names, base → erased; agreement: same-seed images whose value is unchanged; SSIM to the base on related prompts; FID against "
        "rendered ground truth, base → erased. Mean over training seeds.", "",
        "| concept | run | images | left | steps trained | erase s | alignment | agreement | SSIM | FID |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def mean(cells, get):
        return sum(get(c) for c in cells) / len(cells)

    for concept, runs in by_concept_and_run(rows).items():
        for run, cells in runs.items():
            col = [c["collateral"] for c in cells]
            lines.append(f"| {concept} | {run} | {cells[0]['images']} | {mean(cells, lambda c: c['left']):.0%} ({cells[0]['left_base']:.0%}) | "
                         f"{mean(cells, lambda c: c['steps_trained']):.0f} | {mean(cells, lambda c: c['train_s']):.0f} | "
                         f"{mean(col, lambda c: c['alignment_base']):.0%} → {mean(col, lambda c: c['alignment']):.0%} | "
                         f"{mean(col, lambda c: c['agreement']):.0%} | {mean(col, lambda c: c['ssim_related']):.2f} | "
                         f"{mean(col, lambda c: c['fid_base']):.1f} → {mean(col, lambda c: c['fid']):.1f} |")
    lines += ["", "Runs: " + "; ".join(f"{i + 1}. {run}" for i, run in enumerate(dict.fromkeys(label(r) for r in rows))) + ".", "",
              "![Seed 0 of three target prompts per concept: the base model, then each run](samples.png)", "",
              f"Concepts left above {args.bar:.0%} (mean over training seeds), per run:", ""]
    for run in dict.fromkeys(label(r) for r in rows):
        mine = [r for r in rows if label(r) == run]
        over = [c for c, runs in by_concept_and_run(mine).items() if mean(runs[run], lambda r: r["left"]) > args.bar]
        lines.append(f"- {run}: {len(over)} of {len({r['concept'] for r in mine})}" + (f" ({', '.join(over)})" if over else ""))
    return lines


if __name__ == "__main__":
    main()
