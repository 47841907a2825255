"""Benchmark: does suppressing a concept's tokens in cross-attention remove it from the built-in model?

Its experiment is ptp-token-scope (`python benchmarks/run.py ptp-token-scope`).
AbO's implicit δ (paper 001, Eq. 11) is the frozen model's output with the target's cross-attention
suppressed, Prompt-to-Prompt style, minus its plain output. It can only erase what suppression removes.
This script samples the target prompts (AbO's T = 35 DDIM steps, guidance γ1 = 7.5) three ways: as
usual; with the concept's own tokens suppressed (what the implicit δ does); and with those and every
token after them suppressed (end and padding tokens, which a causal text encoder lets see the
concept). The shapes classifier judges each image.
"""

from __future__ import annotations

import argparse

from common import add_output_flags, heading, run_meta, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="square")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt: 0 .. N-1")
    add_output_flags(parser)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from erasekit import load_pipeline
    from erasekit.attention import reweighted_cross_attention, token_weights
    from erasekit.tasks.shapes import ShapesDetector, attribute_of, shapes_task
    from erasekit.guidance import cfg
    from erasekit.sampling import run_sampler, sampling_scheduler, decode, embed, initial_noise, latent_shape, denoiser_out

    pipe, detector = load_pipeline("builtin"), ShapesDetector()
    attribute, value = attribute_of(args.concept)
    scheduler = sampling_scheduler(pipe, 35)
    prompts = shapes_task(args.concept, "target").suites["target"]
    n = args.seeds
    uncond = embed(pipe, [""]).expand(n, -1, -1)
    noise = torch.cat([initial_noise(1, latent_shape(pipe), torch.Generator().manual_seed(s), scheduler) for s in range(n)])

    def scopes(text: str) -> dict[str, torch.Tensor | None]:
        word = token_weights(pipe.tokenizer, [text] * n, [args.concept], 0.0)
        after = word.clone()
        last = int((word[0] == 0).nonzero().max())
        after[:, last:] = 0.0
        return {"none": None, "the concept's tokens (implicit δ)": word, "those and every token after them": after}

    counts: dict[str, dict[str, int]] = {}
    for prompt in prompts:
        cond = embed(pipe, [prompt.text]).expand(n, -1, -1)
        for scope, weights in scopes(prompt.text).items():
            def guided(x, t, i):
                eps_uncond = denoiser_out(pipe.unet, x, t, uncond)
                if weights is None:
                    eps_cond = denoiser_out(pipe.unet, x, t, cond)
                else:
                    with reweighted_cross_attention(pipe.unet, weights):
                        eps_cond = denoiser_out(pipe.unet, x, t, cond)
                return cfg(eps_uncond, eps_cond, 7.5)

            labels = detector.predict(decode(pipe, run_sampler(scheduler, noise, guided)))
            c = counts.setdefault(scope, {"images": 0, "detected": 0})
            c["images"] += n
            c["detected"] += sum(label == value for label in labels[attribute])
        print(prompt.text, {s: c["detected"] for s, c in counts.items()}, flush=True)

    meta = run_meta()
    rows = [{"suppressed": scope, **c} for scope, c in counts.items()]
    lines = heading(f"Suppressing '{args.concept}' in cross-attention on the built-in model", meta) + [
        f"{len(prompts)} target prompts x {n} seeds, DDIM 35 steps, guidance 7.5; the conditional branch reweighted, the unconditional not.", "",
        f"| tokens suppressed | {args.concept} detected |", "|---|---:|",
    ]
    lines += [f"| {r['suppressed']} | {100 * r['detected'] / r['images']:.0f}% ({r['detected']}/{r['images']}) |" for r in rows]
    write_results(args.results_dir, meta, rows, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
