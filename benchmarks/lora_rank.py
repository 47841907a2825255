"""Benchmark: what exporting an erasure as a LoRA costs, at several ranks, against the full change.

Its experiment is lora-rank (`python benchmarks/run.py lora-rank`). Each run of the experiment erases
the concept from the built-in model; then the full erasure and its LoRA at each rank (a truncated SVD
of every changed weight's delta, erasekit.lora, merged into a fresh base model) are evaluated on the
same prompts and seeds: how much of the concept is left, and what the other values of its attribute
keep. A LoRA holds weight matrices only, so even at full rank it leaves out changed biases.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import add_output_flags, heading, load_runs, run_meta, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--ranks", default="4,16,64", help="comma-separated LoRA ranks")
    parser.add_argument("--eval-seeds", type=int, default=4, help="seeds per prompt: 0 .. N-1")
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline
    from erasekit.tasks.shapes import ShapesDetector, attribute_of, shapes_task
    from erasekit import Sampling
    from erasekit.evaluation.evaluate import evaluate
    from erasekit.lora import apply_lora, save_lora

    attribute, _ = attribute_of(args.concept)
    suites, detector, seeds = shapes_task(args.concept, "target,related").suites, ShapesDetector(), list(range(args.eval_seeds))
    base, base_images, rows = load_pipeline("builtin"), None, []
    for method, settings, train_seed in load_runs(args.experiment):
        print("erasing with", method, settings or "defaults", "training seed", train_seed, flush=True)
        erased = load_pipeline("builtin")
        erasure = erase(erased, method=method, concepts=args.concept, seed=train_seed, progress=False, **settings)
        variants = [("full change", erased, None)]
        with tempfile.TemporaryDirectory() as work:
            for rank in (int(r) for r in args.ranks.split(",")):
                lora, path = erasure.lora(rank), Path(work) / f"rank{rank}.safetensors"
                save_lora(lora, path)
                merged = load_pipeline("builtin")
                apply_lora(merged, path)
                variants.append((f"LoRA rank {rank}", merged, (lora, path.stat().st_size / 2**20)))
            for label, pipe, made in variants:
                evaluation = evaluate(base, pipe, shapes_task(args.concept), suites, detector, sampling=Sampling(seeds=seeds), reference=None, base_images=base_images, progress=True)
                base_images = base_images or {name: evaluation.images[name]["base"] for name in suites}
                target, related = evaluation.suites["target"], evaluation.suites["related"]
                lora, size = made if made else (None, None)
                rows.append({"method": method, "settings": settings, "train_seed": train_seed, "variant": label,
                             "target_base": target.detected_base, "target": target.detected,
                             "agreement_base": related.alignment_base[attribute], "agreement": related.alignment[attribute],
                             "kept": related.kept, "ssim_related": related.ssim,
                             "weight_error": max(lora.error.values()) if lora else 0.0,
                             "left_out": len(lora.dropped) if lora else 0, "file_mb": size,
                             "n_target": len(evaluation.jobs["target"]), "n_related": len(evaluation.jobs["related"])})
                print(rows[-1], flush=True)
    write_table(rows, args, attribute, run_meta())


def write_table(rows, args, attribute, meta) -> None:
    first = rows[0]
    lines = heading(f"Erasures exported as LoRAs: erasing '{args.concept}' at ranks {args.ranks}", meta) + [
        f"Built-in model; target prompts {first['n_target']} images, related prompts (other values of the {attribute}) "
        f"{first['n_related']} images, evaluation seeds 0..{args.eval_seeds - 1}, one training seed per method. "
        "Each LoRA is merged into a fresh base model (erasekit.lora.apply_lora; diffusers' load_lora_weights gives the same "
        "outputs, tests/test_lora.py). 'Weight error': the largest, over layers, of ||ΔW - up·down|| / ||ΔW||. "
        "'Left out': changed tensors that are not weight matrices (biases), which no LoRA holds.", "",
        f"| method | variant | target detected, base → erased | related: {attribute} drawn right, base → erased | "
        "related: same shape / colour / texture as the base image | SSIM to base, related | weight error | left out | file (MB) |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        kept = " / ".join(f"{100 * r['kept'][a]:.1f}%" for a in ("shape", "colour", "texture"))
        size = f"{r['file_mb']:.2f}" if r["file_mb"] is not None else "—"
        lines.append(f"| {r['method']} | {r['variant']} | {100 * r['target_base']:.0f}% → {100 * r['target']:.1f}% | "
                     f"{100 * r['agreement_base']:.1f}% → {100 * r['agreement']:.1f}% | {kept} | {r['ssim_related']:.3f} | "
                     f"{r['weight_error']:.3f} | {r['left_out']} | {size} |")
    write_results(args.results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
