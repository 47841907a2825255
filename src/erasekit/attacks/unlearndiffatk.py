"""UnlearnDiffAtk (Zhang et al. 2024, "To Generate or Not? Safety-Driven Unlearned Diffusion Models
Are Still Easy to Generate Unsafe Images ... For Now"): discrete prompt optimisation in which the
erased model's own denoising loss on a target image serves as the classifier.

For each target prompt and seed, k prefix tokens are prepended to the prompt and chosen to minimise
‖ε_θ'(x_t, [prefix; prompt], t) − ε‖² on the base model's image for that prompt and seed
(losses.denoising_loss): if the erased model can still denoise an image of the
concept well under some prompt, that prompt draws the concept.

Where ours differs: the discrete search is projected gradient descent on the prefix's embeddings
(PEZ, Wen et al. 2023): each step the prefix is projected onto the nearest vocabulary words
(cosine), the loss is taken there and its gradient updates the continuous embeddings. The prompt is
judged once, at the end: the prefix with the lowest loss seen, on noised images fixed for the
whole search, where the paper's code checks images along the way and stops early.
Candidates are whole words of the vocabulary, so the found prompt is text that replays.
"""

from __future__ import annotations

import torch

from ..families import denoiser_of, family_of
from ..losses import denoising_loss
from ..progress import counted
from ..sampling import encode_images, denoiser_out
from . import Attack, Found
from .tokens import decode_words, denoising_inputs, placeholder, word_vocabulary

PREFIX = "<prefix>"


def nearest_words(vectors: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """Index into `vocabulary` (words, width) of each vector's nearest word by cosine similarity."""
    return (torch.nn.functional.normalize(vectors, dim=-1) @ torch.nn.functional.normalize(vocabulary, dim=-1).T).argmax(-1)


class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    default_steps = 40
    needs_base = True

    def find(self, erased, concept, prompts, steps, *, sampling, detector=None, base=None, images=None, progress=False, word=None, tokens: int = 5, lr: float = 0.05, noises: int = 1, seed: int = 0) -> Found:
        """A k-token prefix per (prompt, seed), optimised against the base model's image for it (or the user's images, in turn)."""
        steps = steps or self.default_steps
        jobs = [(p, s) for p in prompts for s in sampling.seeds]
        if images:
            targets = [images[i % len(images)] for i in range(len(jobs))]
        else:
            targets = sampling.generate(base, sampling.jobs(prompts))
        latents = encode_images(erased, targets)
        words, vocabulary = word_vocabulary(erased)  # (n,), (n, widths of every text encoder)
        generator = torch.Generator("cpu").manual_seed(seed)
        start = torch.randint(0, len(words), (len(jobs), tokens), generator=generator)
        prefix = torch.nn.Parameter(vocabulary[start].clone())  # (jobs, k, width), continuous
        optimizer = torch.optim.Adam([prefix], lr=lr)
        captions = [" ".join([PREFIX] * tokens) + " " + p for p, _ in jobs]
        encode, denoiser = family_of(erased).encode, denoiser_of(erased)
        chunks = [list(range(i, min(i + sampling.batch_size, len(jobs)))) for i in range(0, len(jobs), sampling.batch_size)]
        chunk: list[int] = []

        def projected(n):  # the nearest words, with the gradient passed straight through to the continuous prefix
            rows = prefix[chunk]
            rows = rows + (vocabulary[nearest_words(rows.detach(), vocabulary)] - rows).detach()
            return rows.reshape(-1, rows.shape[-1]).repeat(n // (len(chunk) * tokens), 1)

        # The same noised images every step (`noises` per job), so that losses compare across steps.
        x_t, t, target = denoising_inputs(erased, latents.repeat(noises, 1, 1, 1), generator)
        fixed = [x.reshape(noises, len(jobs), *x.shape[1:]) for x in (x_t, t, target)]
        best_loss = torch.full((len(jobs),), float("inf"))
        best = start.clone()
        with placeholder(erased, PREFIX, projected), counted("unlearndiffatk", steps, not progress) as tick:
            for _ in range(steps):
                optimizer.zero_grad()
                now = nearest_words(prefix.detach(), vocabulary)
                for chunk in chunks:
                    x_t, t, target = (x[:, chunk].flatten(0, 1) for x in fixed)
                    conditioning = encode(erased, [captions[i] for i in chunk] * noises)
                    per_job = denoising_loss(denoiser_out(denoiser, x_t, t, conditioning), target).reshape(noises, len(chunk)).mean(0)
                    (per_job.sum() / len(jobs)).backward()
                    better = per_job.detach().cpu() < best_loss[chunk]
                    best_loss[chunk] = torch.where(better, per_job.detach().cpu(), best_loss[chunk])
                    best[chunk] = torch.where(better[:, None], now[chunk].cpu(), best[chunk])
                optimizer.step()
                tick(f"loss {best_loss.mean():.4f}")
        chosen = words[best]
        found = [(p, s, f"{decode_words(erased.tokenizer, ids)} {p}") for (p, s), ids in zip(jobs, chosen)]
        return Found(found, steps=steps, images=len(targets), details={"prefix_tokens": tokens, "lr": lr, "noises_per_step": noises})
