"""Benchmark: every erasure attacked. How often does the concept come back?

Its experiment is robustness (`python benchmarks/run.py robustness`). For each training seed of the
experiment's runs, `erasekit bench` (its cells, erasekit.evaluation.bench.bench_cells) erases each
concept with each method, generates the target prompts on every evaluation seed, and runs every
attack against the erased model and, once per concept, against the unerased one (the sanity rows).
ASR before and after each attack, as UnlearnDiffAtk defines it (erasekit.attacks), is averaged
over training seeds; the attacks' budgets are fixed and written in the table's header. A run's
`preserve = "siblings"` keeps, for each concept, the other values of its attribute (`for_concept`). The cells,
with the erasures, the found prompts and the learned tokens, are cached in the results folder's
cells/ (not committed), so an interrupted run resumes and more training seeds add to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import add_output_flags, heading, load_runs, run_meta, seed_range, write_results


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
    parser.add_argument("--prompts", default="target",
                        help="the suites evaluated: target, or with related (and unrelated) also what the erasure cost there: "
                             "same-attribute alignment, same-seed agreement, SSIM and FID")
    parser.add_argument("--attack-restarts", type=int, default=1, help="runs of each optimising attack with its own seeds, pooled: the worst case over them")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit.api import Sampling
    from erasekit.evaluation.bench import BenchSettings, bench_cells, check_bench

    concepts, attacks = args.concepts.split(","), tuple(args.attacks.split(","))
    runs = load_runs(args.experiment)
    rows = []
    # One bench per (training seed, method, settings, concept): a method may run with several settings, each its own cells.
    for train_seed, method, method_settings in sorted(((seed, m, s) for m, s, seed in runs), key=lambda r: r[0]):
        for concept in concepts:
            per_method = {method: for_concept(method_settings, concept)}
            settings = check_bench([method], [concept], BenchSettings(prompts=args.prompts, sampling=Sampling(seeds=seed_range(args.seeds)),
                                                                      train_seed=train_seed, attack_restarts=args.attack_restarts), per_method, attacks)
            cell = next(bench_cells(args.results_dir, [method], [concept], settings, per_method, progress=True, attacks=attacks))
            rows.append({"method": cell["method"], "settings": method_settings, "train_seed": train_seed, "concept": cell["concept"],
                         "images": cell["evaluation"]["suites"]["target"]["n_images"], "train_s": cell["train_s"],
                         "attacks": {n: {k: a[k] for k in ("asr_before", "asr_after", "asr_attack_only", "budget")} | {"successes": a.get("successes")}
                                     for n, a in cell["attacks"].items()},
                         "base_attacks": {n: {k: a[k] for k in ("asr_before", "asr_after", "asr_attack_only")} for n, a in cell["base_attacks"].items()}}
                        | ({"collateral": collateral(cell)} if "related" in cell["evaluation"]["suites"] else {}))
            print(label(rows[-1]), rows[-1]["concept"], train_seed, {n: a["asr_after"] for n, a in rows[-1]["attacks"].items()}, flush=True)
            write(rows, args, concepts)  # after every cell, so an interrupted run leaves what it finished


def for_concept(settings: dict, concept: str) -> dict:
    """A run's settings for one concept: `preserve = "siblings"` keeps the other values of its attribute (the other shapes
    for a shape: the values the related prompts name), a rule that needs no per-concept choice."""
    if settings.get("preserve") != "siblings":
        return settings
    from erasekit.shapes.world import ATTRIBUTES
    from erasekit.tasks.shapes import attribute_of

    attribute, value = attribute_of(concept)
    return settings | {"preserve": ",".join(v for v in ATTRIBUTES[attribute] if v != value)}


def label(row: dict) -> str:
    """A run's name in the tables: its method, and the settings it changed."""
    changed = ", ".join(f"{k} {v}" for k, v in row["settings"].items())
    return f"{row['method']} ({changed})" if changed else row["method"]


def by_concept_and_run(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """The rows of each concept, then of each run (`label`), in the order they came: the tables' rows."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault(r["concept"], {}).setdefault(label(r), []).append(r)
    return groups


def collateral(cell: dict) -> dict:
    """What the erasure cost, from a cell evaluated on the related prompts: base and erased alignment with the concept's
    own attribute on related prompts, same-seed agreement on it, SSIM to the base, and FID against rendered ground truth."""
    suites, attribute = cell["evaluation"]["suites"], cell["attribute"]
    related, distribution = suites["related"], cell["evaluation"]["distribution"]
    return {"alignment_base": related["alignment_base"][attribute], "alignment": related["alignment"][attribute],
            "agreement": related["kept"][attribute], "ssim_related": related["ssim"],
            "fid_base": distribution["base"]["fid"], "fid": distribution["erased"]["fid"]}


def write(rows: list[dict], args, concepts: list[str]) -> None:
    from erasekit.io import atomic_save_image

    pictures = []
    for concept in concepts:
        shown = [(f"{label(r)}, {name}", args.results_dir / a["successes"]) for r in rows if r["concept"] == concept and r["train_seed"] == 0
                 for name, a in r["attacks"].items() if a["successes"]]
        if shown:
            atomic_save_image(first_rows(shown), args.results_dir / f"successes-{concept}.png")
            pictures.append(concept)
    meta = run_meta()
    write_results(args.results_dir, meta, in_training_order(rows, concepts), table(rows, args, meta, pictures))


def in_training_order(rows: list[dict], concepts: list[str]) -> list[dict]:
    """Rows as the data file's trainings come (run, then training seed), each one's concepts together: what run.py --check reads."""
    runs = list(dict.fromkeys(label(r) for r in rows))
    return sorted(rows, key=lambda r: (runs.index(label(r)), r["train_seed"], concepts.index(r["concept"])))


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def table(rows: list[dict], args, meta, pictures: list[str]) -> list[str]:
    """Per concept: the sanity rows, then each method's ASR before -> after per attack, mean over training seeds (range)."""
    attacks = list(rows[0]["attacks"])
    budgets = "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in rows[0]["attacks"][n]["budget"].items() if k != "images_generated")
                        for n in attacks)
    lines = heading("Robustness: every erasure attacked", meta) + [
        f"Built-in model; target prompts on evaluation seeds {args.seeds} ({', '.join(f'{c}: {n} images' for c, n in dict.fromkeys((r['concept'], r['images']) for r in rows))} "
        "per cell); each method with its defaults but for the settings its row names. ASR: share of target prompts x seeds whose image the shapes classifier "
        "(top-1) takes for the concept; after = as written or under the attack (UnlearnDiffAtk's definition, which counts "
        "prompts that already succeeded). Mean over training seeds, with the range when there are several. "
        f"Attack budgets: {budgets}.", "",
        "| concept | model | training seeds | " + " | ".join(f"{a}: before → after" for a in attacks) + " | " + " | ".join(f"{a}: its prompts alone" for a in attacks) + " |",
        "|---|---|---:|" + "---:|" * (2 * len(attacks)),
    ]
    for concept, runs in by_concept_and_run(rows).items():
        sanity = next(iter(runs.values()))[0]["base_attacks"]
        lines.append(f"| {concept} | unerased (sanity) | — | " + " | ".join(f"{_pct(sanity[a]['asr_before'])} → {_pct(sanity[a]['asr_after'])}" for a in attacks)
                     + " | " + " | ".join(_pct(sanity[a]["asr_attack_only"]) for a in attacks) + " |")
        for run, cells in runs.items():

            def mean(attack, key, cells=cells):
                values = [r["attacks"][attack][key] for r in cells]
                text = _pct(sum(values) / len(values))
                return text + (f" ({_pct(min(values))}-{_pct(max(values))})" if len(values) > 1 else "")

            lines.append(f"| {concept} | {run} | {len(cells)} | " + " | ".join(f"{mean(a, 'asr_before')} → {mean(a, 'asr_after')}" for a in attacks)
                         + " | " + " | ".join(mean(a, "asr_attack_only") for a in attacks) + " |")
    lines += collateral_table(rows)
    lines += ["", "Successful attacks (training seed 0; the first of each method and attack): the base model's image, the erased "
              "model's, and the erased model's under the attack prompt, same prompt and seed.", ""]
    lines += [f"![successful attacks on {c}: base, erased, attacked](successes-{c}.png)" for c in pictures]
    return lines


def collateral_table(rows: list[dict]) -> list[str]:
    """What each erasure cost (when the run evaluated every suite), mean over training seeds: on prompts that name
    another value of the concept's attribute, how often the image shows the value named (base → erased) and the
    same value as the base image of the same seed; SSIM to the base there; FID of every non-target image evaluated."""
    if "collateral" not in rows[0]:
        return []
    lines = ["", "What each erasure cost, on the related prompts (another value of the concept's attribute: "
             "another shape for a shape) and, for FID, every non-target prompt against rendered ground truth; "
             "mean over training seeds. Erase time on this machine's 2 cores.", "",
             "| concept | model | target left | related: value named, base → erased | same value as base, same seed | SSIM to base | FID, base → erased | erase (s) |",
             "|---|---|---:|---|---:|---:|---|---:|"]
    for concept, runs in by_concept_and_run(rows).items():
        for run, cells in runs.items():

            def mean(key, cells=cells):
                return sum(r["collateral"][key] for r in cells) / len(cells)

            left = sum(next(iter(r["attacks"].values()))["asr_before"] for r in cells) / len(cells)
            lines.append(f"| {concept} | {run} | {_pct(left)} | {_pct(mean('alignment_base'))} → {_pct(mean('alignment'))} | {_pct(mean('agreement'))} "
                         f"| {mean('ssim_related'):.3f} | {mean('fid_base'):.1f} → {mean('fid'):.1f} | {sum(r['train_s'] for r in cells) / len(cells):.0f} |")
    return lines


if __name__ == "__main__":
    main()
