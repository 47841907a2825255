"""Benchmark: concept purification (All but One, Fig. 1a) for every training method and for AbO at several λ.

Its experiment is purification (`python benchmarks/run.py purification`). Each run of the experiment
erases the concept from the built-in model; then rendered images of the concept (ground truth from
the shapes world's renderer, not generated) are DDIM-inverted with the base model and denoised with
the erased one (erasekit.attacks.purify), inverting with the null prompt and with the concept's.
The shapes classifier says whether each result still shows the concept; SSIM says how much of the
input it kept. The base model's own reconstruction of the same inverted latents is the sanity row.
The paper's claim: only AbO with λ = 0 removes the concept this way, consistently.
"""

from __future__ import annotations

import argparse

from common import add_output_flags, heading, load_runs, run_meta, write_results


def concept_images(concept: str, n: int, seed: int) -> list:
    """The first `n` rendered images of the world (seed `seed`) whose attribute is the concept."""
    from PIL import Image

    from erasekit.tasks.shapes import attribute_of
    from erasekit.shapes.world import render_dataset

    attribute, value = attribute_of(concept)
    images, start = [], 0
    while len(images) < n:
        arrays, labels = render_dataset(256, seed, start)
        images += [Image.fromarray(a) for a, lab in zip(arrays, labels) if getattr(lab, attribute) == value]
        start += 256
    return images[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--images", type=int, default=32, help="rendered images of the concept")
    parser.add_argument("--strengths", default="1.0", help="comma-separated shares of the DDIM schedule inverted")
    parser.add_argument("--steps", type=int, default=100)
    add_output_flags(parser, trains=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit import erase, load_pipeline
    from erasekit.attacks.purify import purify
    from erasekit.tasks.shapes import ShapesDetector
    from erasekit.evaluation.metrics import ssim

    images, detector, base = concept_images(args.concept, args.images, seed=2024), ShapesDetector(), load_pipeline("builtin")
    strengths = [float(s) for s in args.strengths.split(",")]
    rows = [{"method": "input", "detected": detector.detect(images, args.concept).rate}]
    for method, settings, train_seed in load_runs(args.experiment):
        print("erasing with", method, settings or "defaults", "training seed", train_seed, flush=True)
        erased = load_pipeline("builtin")
        erase(erased, method=method, concepts=args.concept, seed=train_seed, progress=False, **settings)
        for prompt in ("", args.concept):
            for strength in strengths:
                result = purify(base, erased, images, prompt=prompt, strength=strength, steps=args.steps)
                rows.append({"method": method, "settings": settings, "train_seed": train_seed, "prompt": prompt, "strength": strength,
                             "detected": detector.detect(result.images, args.concept).rate,
                             "detected_reconstructed": detector.detect(result.reconstructed, args.concept).rate,
                             "ssim": float(ssim(images, result.images).mean()), "ssim_reconstructed": float(ssim(images, result.reconstructed).mean())})
                print(rows[-1], flush=True)
    write_table(rows, args, run_meta())


def write_table(rows, args, meta) -> None:
    inputs, runs = rows[0], rows[1:]
    lines = heading(f"Purifying rendered images of '{args.concept}': invert with the base model, denoise with the erased one", meta) + [
        f"{args.images} rendered images of {args.concept} (the classifier finds it in {100 * inputs['detected']:.0f}% of them), "
        f"DDIM with {args.steps} steps, guidance 1, one training seed per setting. 'Base model' columns: the same inverted latents "
        "denoised by the unerased model, which should give the input back (the concept stays, SSIM high).", "",
        "| method | settings | inverted with | strength | concept left after purifying | SSIM to input | base model: concept left | base model: SSIM to input |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        label = ", ".join(f"{k} {v}" for k, v in r["settings"].items()) or "defaults"
        lines.append(f"| {r['method']} | {label} | {'the concept' if r['prompt'] else 'the null prompt'} | {r['strength']:.1f} | "
                     f"{100 * r['detected']:.0f}% | {r['ssim']:.3f} | {100 * r['detected_reconstructed']:.0f}% | {r['ssim_reconstructed']:.3f} |")
    write_results(args.results_dir, meta, runs, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
