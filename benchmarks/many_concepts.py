"""Benchmark: several concepts erased at once against each erased alone, on the built-in model.

Run through its experiment (benchmarks/experiments/many-concepts.toml):
    .venv/bin/python benchmarks/run.py many-concepts
For every set of concepts (three shapes, three colours) and every training seed of the experiment's
run, it erases the whole set in one call and each concept of it alone, with the same method and
settings. Each concept is judged on its own target prompts (its name, alone and with every value of
the other attributes), on --eval-seeds seeds per prompt: the share of images where the shapes
classifier finds it. Preservation is read on prompts that name a value of the same attribute that
no erasure of the set touches (square, triangle and hexagon when the shapes are erased), as the
share of images whose shape (or colour) is the one named. A run whose settings say
preserve = "untouched" keeps exactly those values (AbO's `preserve`), alone and together alike.
With --steps-per-concept the erasure of the whole set trains n times the steps each concept gets
alone, so that every concept gets as many draws as it does alone.
"""

from __future__ import annotations

import argparse
from statistics import mean

from common import add_output_flags, heading, load_runs, run_meta, write_results

SETS = {"shapes": ["circle", "star", "cross"], "colours": ["red", "green", "blue"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-seeds", type=int, default=4, help="seeds per prompt: 0 .. N-1 from --first-eval-seed")
    parser.add_argument("--first-eval-seed", type=int, default=0)
    parser.add_argument("--steps-per-concept", action="store_true", help="erase the set of n concepts with n times the steps each gets alone")
    parser.add_argument("--sets", default=",".join(SETS), help=f"which sets of concepts, comma-separated, of {', '.join(SETS)}")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()
    names = args.sets.split(",")
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        parser.error(f"unknown set '{unknown[0]}': choose from {', '.join(SETS)}")
    sets = {name: SETS[name] for name in names}

    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline
    from erasekit.api import generate_jobs
    from erasekit.methods import get_method
    from erasekit.tasks.shapes import ATTRIBUTES, ShapesDetector, attribute_of, target_prompts

    seeds = list(range(args.first_eval_seed, args.first_eval_seed + args.eval_seeds))
    detector = ShapesDetector()
    base = load_pipeline("builtin")

    def images(pipe, prompts):
        return generate_jobs(pipe, [(p, s, 7.5) for p in prompts for s in seeds], 35, 32)

    def detected(pipe, concept):
        return detector.detect(images(pipe, target_prompts(concept)), concept).rate

    def untouched(concepts):
        """The values of the set's attribute that no concept of the set is."""
        return [v for v in ATTRIBUTES[attribute_of(concepts[0])[0]] if v not in concepts]

    def kept(pipe, concepts):
        """Share of images showing the value named, over prompts naming values of the attribute no concept of the set is."""
        attribute = attribute_of(concepts[0])[0]
        other = "colour" if attribute != "colour" else "shape"
        prompts = [(f"a {o} {v}" if attribute == "shape" else f"a {v} {o}", v) for v in untouched(concepts) for o in ATTRIBUTES[other]]
        predicted = detector.predict(images(pipe, [p for p, _ in prompts]))[attribute]
        wanted = [v for _, v in prompts for _ in seeds]
        return sum(p == w for p, w in zip(predicted, wanted)) / len(wanted), len(wanted)

    rows = []
    for set_name, concepts in sets.items():
        base_rates = {c: detected(base, c) for c in concepts}
        base_kept, n_kept = kept(base, concepts)
        for method, settings, train_seed in load_runs(args.experiment):
            given = dict(settings)
            if given.get("preserve") == "untouched":
                given["preserve"] = ",".join(untouched(concepts))
            print("erasing", concepts, "with", method, given or "defaults", "training seed", train_seed, flush=True)
            steps = get_method(method).make_config(**given).steps * (len(concepts) if args.steps_per_concept else 1)
            together = erase(load_pipeline("builtin"), method=method, concepts=concepts, seed=train_seed, progress=False, **given | {"steps": steps}).pipe
            row = {"set": set_name, "concepts": concepts, "method": method, "settings": settings, "train_seed": train_seed, "steps_together": steps,
                   "eval_seeds": seeds, "n_target": len(target_prompts(concepts[0])) * len(seeds), "n_kept": n_kept,
                   "base": base_rates, "together": {c: detected(together, c) for c in concepts},
                   "kept_base": base_kept, "kept_together": kept(together, concepts)[0], "alone": {}}
            for c in concepts:
                print("erasing", c, "alone, training seed", train_seed, flush=True)
                alone = erase(load_pipeline("builtin"), method=method, concepts=c, seed=train_seed, progress=False, **given).pipe
                row["alone"][c] = detected(alone, c)
            rows.append(row)
    write_table(rows, run_meta(), args.results_dir)


def write_table(rows: list[dict], meta: dict, results_dir) -> None:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    def named(r: dict) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        return settings + (f"; the set: {r['steps_together']} steps" if r.get("steps_together") else "")

    r0 = rows[0]
    lines = heading("Erasing three concepts at once against each alone", meta) + [
        f"Method {r0['method']}; training seeds {sorted({r['train_seed'] for r in rows})}; evaluation seeds {r0['eval_seeds']}. "
        f"Each concept: the share of its {r0['n_target']} target images where the shapes classifier finds it, mean over "
        "the training seeds (each seed's figure in brackets). Untouched values: the share of images showing the value "
        f"named, over {r0['n_kept']} images of prompts that name a value of the same attribute no erasure of the set "
        "touches (preserve=untouched: the erasure was told to keep exactly these).", "",
        "| settings | set | concept | base | erased alone | erased with the other two | points above alone |", "|---|---|---|---:|---:|---:|---:|",
    ]
    for settings, set_name in dict.fromkeys((named(r), r["set"]) for r in rows):
        group = [r for r in rows if r["set"] == set_name and named(r) == settings]
        for c in group[0]["concepts"]:
            alone, together = [r["alone"][c] for r in group], [r["together"][c] for r in group]
            each = lambda xs: " (" + ", ".join(pct(x) for x in xs) + ")" if len(xs) > 1 else ""  # noqa: E731
            lines.append(f"| {settings} | {set_name} | {c} | {pct(group[0]['base'][c])} | {pct(mean(alone))}{each(alone)} | "
                         f"{pct(mean(together))}{each(together)} | {100 * (mean(together) - mean(alone)):+.1f} |")
        kept = [r["kept_together"] for r in group]
        lines.append(f"| {settings} | {set_name} | untouched values, drawn as named | {pct(group[0]['kept_base'])} | | "
                     f"{pct(mean(kept))}{each(kept)} | |")
    write_results(results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
