"""Benchmark: every erasure attacked. How often does the concept come back?

Its experiment is robustness (`python benchmarks/run.py robustness`). For each training seed of the
experiment's runs, `erasekit bench` (its cells, erasekit.evaluation.bench.bench_cells) erases each
concept with each method, generates the target prompts on every evaluation seed, and runs every
attack against the erased model and, once per concept, against the unerased one (the sanity rows).
ASR before and after each attack, as UnlearnDiffAtk defines it (erasekit.attacks), is averaged
over training seeds; the attacks' budgets are fixed and written in the table's header. The cells,
with the erasures, the found prompts and the learned tokens, are cached in the results folder's
cells/ (not committed), so an interrupted run resumes and more training seeds add to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import add_output_flags, heading, load_runs, run_meta, write_results


def first_rows(paths: list[tuple[str, Path]]):
    """One picture: the first row (and column labels) of each successes grid, under its caption."""
    from PIL import Image, ImageDraw

    strips = []
    for caption, path in paths:
        grid = Image.open(path).convert("RGB")
        row = grid.crop((0, 0, grid.width, 16 + 128))  # the column labels, then one 64 px image at scale 2
        strip = Image.new("RGB", (row.width, row.height + 14), "white")
        ImageDraw.Draw(strip).text((4, 1), caption, fill="black")
        strip.paste(row, (0, 14))
        strips.append(strip)
    canvas = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    y = 0
    for s in strips:
        canvas.paste(s, (0, y))
        y += s.height
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default="square,red")
    parser.add_argument("--attacks", default="paraphrase,inversion,unlearndiffatk,ring-a-bell")
    parser.add_argument("--seeds", default="0-12", help="evaluation seeds per target prompt (first-last)")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit.api import Sampling
    from erasekit.evaluation.bench import BenchSettings, bench_cells, check_bench

    lo, hi = (int(x) for x in args.seeds.split("-"))
    concepts, attacks = args.concepts.split(","), tuple(args.attacks.split(","))
    runs = load_runs(args.experiment)
    rows = []
    for train_seed in sorted({seed for _, _, seed in runs}):
        methods = [m for m, _, seed in runs if seed == train_seed]
        per_method = {m: settings for m, settings, seed in runs if seed == train_seed}
        settings = check_bench(methods, concepts, BenchSettings(prompts="target", sampling=Sampling(seeds=tuple(range(lo, hi + 1))), train_seed=train_seed),
                               per_method, attacks)
        for cell in bench_cells(args.results_dir, methods, concepts, settings, per_method, progress=True, attacks=attacks):
            rows.append({"method": cell["method"], "settings": cell["method_settings"], "train_seed": train_seed, "concept": cell["concept"],
                         "images": cell["evaluation"]["suites"]["target"]["n_images"],
                         "attacks": {n: {k: a[k] for k in ("asr_before", "asr_after", "asr_attack_only", "budget")} | {"successes": a.get("successes")}
                                     for n, a in cell["attacks"].items()},
                         "base_attacks": {n: {k: a[k] for k in ("asr_before", "asr_after", "asr_attack_only")} for n, a in cell["base_attacks"].items()}})
            print(rows[-1]["method"], rows[-1]["concept"], train_seed, {n: a["asr_after"] for n, a in rows[-1]["attacks"].items()}, flush=True)
            write(rows, args, concepts)  # after every cell, so an interrupted run leaves what it finished


def write(rows: list[dict], args, concepts: list[str]) -> None:
    from erasekit.io import atomic_save_image

    pictures = []
    for concept in concepts:
        shown = [(f"{r['method']}, {name}", args.results_dir / a["successes"]) for r in rows if r["concept"] == concept and r["train_seed"] == 0
                 for name, a in r["attacks"].items() if a["successes"]]
        if shown:
            atomic_save_image(first_rows(shown), args.results_dir / f"successes-{concept}.png")
            pictures.append(concept)
    meta = run_meta()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_training = sorted(rows, key=lambda r: (methods.index(r["method"]), r["train_seed"], concepts.index(r["concept"])))
    write_results(args.results_dir, meta, by_training, table(rows, args, meta, pictures))  # trainings in the data file's order, each one's concepts together


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def table(rows: list[dict], args, meta, pictures: list[str]) -> list[str]:
    """Per concept: the sanity rows, then each method's ASR before -> after per attack, mean over training seeds (range)."""
    attacks = list(rows[0]["attacks"])
    budgets = "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in rows[0]["attacks"][n]["budget"].items() if k != "images_generated")
                        for n in attacks)
    lines = heading("Robustness: every erasure attacked", meta) + [
        f"Built-in model; target prompts on evaluation seeds {args.seeds} ({', '.join(f'{c}: {n} images' for c, n in dict.fromkeys((r['concept'], r['images']) for r in rows))} "
        "per cell); each method with its defaults. ASR: share of target prompts x seeds whose image the shapes classifier "
        "(top-1) takes for the concept; after = as written or under the attack (UnlearnDiffAtk's definition, which counts "
        "prompts that already succeeded). Mean over training seeds, with the range when there are several. "
        f"Attack budgets: {budgets}.", "",
        "| concept | model | training seeds | " + " | ".join(f"{a}: before → after" for a in attacks) + " | " + " | ".join(f"{a}: its prompts alone" for a in attacks) + " |",
        "|---|---|---:|" + "---:|" * (2 * len(attacks)),
    ]
    for concept in dict.fromkeys(r["concept"] for r in rows):
        mine = [r for r in rows if r["concept"] == concept]
        sanity = mine[0]["base_attacks"]
        lines.append(f"| {concept} | unerased (sanity) | — | " + " | ".join(f"{_pct(sanity[a]['asr_before'])} → {_pct(sanity[a]['asr_after'])}" for a in attacks)
                     + " | " + " | ".join(_pct(sanity[a]["asr_attack_only"]) for a in attacks) + " |")
        for method in dict.fromkeys(r["method"] for r in mine):
            cells = [r for r in mine if r["method"] == method]

            def mean(attack, key):
                values = [r["attacks"][attack][key] for r in cells]
                text = _pct(sum(values) / len(values))
                return text + (f" ({_pct(min(values))}-{_pct(max(values))})" if len(values) > 1 else "")

            lines.append(f"| {concept} | {method} | {len(cells)} | " + " | ".join(f"{mean(a, 'asr_before')} → {mean(a, 'asr_after')}" for a in attacks)
                         + " | " + " | ".join(mean(a, "asr_attack_only") for a in attacks) + " |")
    lines += ["", "Successful attacks (training seed 0; the first of each method and attack): the base model's image, the erased "
              "model's, and the erased model's under the attack prompt, same prompt and seed.", ""]
    lines += [f"![successful attacks on {c}: base, erased, attacked](successes-{c}.png)" for c in pictures]
    return lines


if __name__ == "__main__":
    main()
