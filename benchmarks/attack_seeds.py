"""Benchmark: how much an attack's own seed moves its success rate against one erasure.

Its experiment is attack-seeds (`python benchmarks/run.py attack-seeds`). One erasure (the
experiment's method, concept and training seed) is attacked again and again with the same attack and
budget, each time with another seed of the attack itself (its random start, batches and noise);
the images it is judged on (target prompts x evaluation seeds) stay the same. The spread is what a
single attack run can say about robustness.
"""

from __future__ import annotations

import argparse

from common import add_output_flags, heading, load_runs, run_meta, seed_range, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="red")
    parser.add_argument("--attack", default="inversion")
    parser.add_argument("--attack-seeds", type=int, default=5, help="the attack runs with seeds 0 .. N-1")
    parser.add_argument("--seeds", default="0-12", help="evaluation seeds per target prompt (first-last)")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline
    from erasekit.api import Sampling
    from erasekit.attacks import run_attack
    from erasekit.shapes.world import ATTRIBUTES
    from erasekit.tasks import load_task
    from erasekit.tasks.shapes import attribute_of

    sampling = Sampling(seeds=seed_range(args.seeds))
    task = load_task("shapes", args.concept)
    detector, prompts = task.make_detector(), task.target_texts()
    base = load_pipeline("builtin")
    rows = []
    for method, settings, train_seed in load_runs(args.experiment):
        erased = erase("builtin", method=method, concepts=[args.concept], seed=train_seed, progress=False, **settings).pipe
        before = detector.detect(sampling.generate(erased, sampling.jobs(prompts)), args.concept).flags
        for attack_seed in range(args.attack_seeds):
            result = run_attack(args.attack, erased, args.concept, prompts, detector, sampling=sampling, base=base, before=before,
                                seed=attack_seed, **task.attack_options(args.attack))
            rows.append({"method": method, "settings": settings, "train_seed": train_seed, "attack_seed": attack_seed, "images": result.n_prompts,
                         "asr_before": result.asr_before, "asr_after": result.asr_after, "budget": result.budget,
                         "token_distance": token_distance(erased, args.concept, result.embeddings)})
            print(rows[-1]["method"], train_seed, attack_seed, round(result.asr_after, 3), flush=True)
    attribute, value = attribute_of(args.concept)
    others = {c: relative_distance(base, c, value) for c in ATTRIBUTES[attribute] if c != value}
    rows = [r | {"other_distances": others} for r in rows]
    meta = run_meta()
    write_results(args.results_dir, meta, rows, table(rows, args, meta))


def relative_distance(pipe, text: str, concept: str) -> float:
    """‖e(text) − e(concept)‖ / ‖e(concept)‖ for the prompt embeddings (the text encoder's output) of the two alone."""
    from erasekit.sampling import embed

    a, b = embed(pipe, [text]).hidden[0], embed(pipe, [concept]).hidden[0]
    return ((a - b).norm() / b.norm()).item()


def token_distance(pipe, concept: str, embeddings: dict) -> float | None:
    """How far the learned token alone lies from the concept's word alone, in prompt-embedding space."""
    from erasekit.attacks import learned_tokens

    if not embeddings:
        return None
    with learned_tokens(pipe, embeddings):
        return relative_distance(pipe, next(iter(embeddings)), concept)


def table(rows: list[dict], args, meta) -> list[str]:
    budget = ", ".join(f"{k} {v}" for k, v in rows[0]["budget"].items() if k != "images_generated")
    lines = heading(f"One erasure of {args.concept}, {args.attack} with {args.attack_seeds} seeds of its own", meta) + [
        f"Built-in model; target prompts on evaluation seeds {args.seeds} ({rows[0]['images']} images), the same for every attack seed. "
        f"ASR as UnlearnDiffAtk defines it (after counts prompts that succeeded as written). Attack budget: {budget}.", "",
        "| method | training seed | before | " + " | ".join(f"after, attack seed {k}" for k in range(args.attack_seeds)) + " | lowest → highest |",
        "|---|---:|---:|" + "---:|" * (args.attack_seeds + 1)]
    for method, train_seed in dict.fromkeys((r["method"], r["train_seed"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["train_seed"]) == (method, train_seed)]
        after = [r["asr_after"] for r in mine]
        lines.append(f"| {method} | {train_seed} | {100 * mine[0]['asr_before']:.0f}% | " + " | ".join(f"{100 * a:.0f}%" for a in after)
                     + f" | {100 * min(after):.0f}% → {100 * max(after):.0f}% |")
    if rows[0]["token_distance"] is not None:
        others = ", ".join(f"{c} {d:.2f}" for c, d in rows[0]["other_distances"].items())
        lines += ["", f"Where the learned tokens lie: ‖e(token) − e({args.concept})‖ / ‖e({args.concept})‖, the prompt embeddings "
                  "(the text encoder's output) of each alone, per attack seed: " + ", ".join(f"{r['token_distance']:.2f}" for r in rows)
                  + f". The other values of {args.concept}'s attribute, as far from it: {others}."]
    return lines


if __name__ == "__main__":
    main()
