"""What the attacks that work on prompt tokens share: the vocabulary they search, a hook that puts
chosen vectors in place of a placeholder token, images of the concept, and the denoising loss's
inputs (a noised image and what the model should predict from it)."""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from ..api import generate_jobs
from ..errors import ErasekitError
from ..families import family_of


def single_text_encoder(pipe, attack: str) -> None:
    """Refuse, in one line, a family with several text encoders (SDXL): these attacks learn one encoder's tokens."""
    if len(family_of(pipe).text_encoders(pipe)) != 1:
        raise ErasekitError(f"the {attack} attack learns tokens of one text encoder; {type(pipe).__name__} has several (not supported yet)")


def word_tokens(tokenizer) -> torch.Tensor:
    """Ids of the vocabulary's whole words (BPE tokens of letters that end a word), which decode to text
    that tokenises back to the same ids; word pieces, punctuation and the special tokens are left out."""
    return torch.tensor(sorted(i for t, i in tokenizer.get_vocab().items() if re.fullmatch(r"[a-z]+</w>", t)))


def decode_words(tokenizer, ids) -> str:
    return " ".join(tokenizer.convert_ids_to_tokens([int(i) for i in ids])).replace("</w>", "")


def mention(concept: str) -> re.Pattern:
    """The concept as a whole word in a prompt."""
    return re.compile(rf"\b{re.escape(concept)}\b")


def concept_images(base, concept: str, prompts: list[str], detector, n: int, seed: int = 10_000, steps: int = 35,
                   guidance: float = 7.5, batch_size: int = 32) -> list:
    """Up to `n` (prompt, image) pairs of the concept from the base model: the target prompts on seeds
    from `seed` on (apart from the evaluation's), keeping the images the detector confirms."""
    jobs = [(prompts[i % len(prompts)], seed + i, guidance) for i in range(n)]
    images = generate_jobs(base, jobs, steps, batch_size)
    kept = [(prompt, im) for (prompt, _, _), im, flag in zip(jobs, images, detector.detect(images, concept).flags) if flag]
    if not kept:
        raise ErasekitError(f"the base model drew no image the detector takes for '{concept}': nothing to learn it from")
    return kept


@contextmanager
def placeholder(pipe, token: str, vectors):
    """While inside, the text encoder sees `vectors(n)` ((n, width): one row per occurrence, in reading
    order) where prompts hold `token`; the token is in the tokenizer for the while, and the UNet and
    text encoder are frozen, so gradients reach only what `vectors` is made of."""
    from . import learned_tokens

    modules = [pipe.unet, pipe.text_encoder]
    trainable = [[p.requires_grad for p in m.parameters()] for m in modules]
    with learned_tokens(pipe, {token: pipe.text_encoder.get_input_embeddings().weight[0].detach()}):
        token_id = pipe.tokenizer.convert_tokens_to_ids(token)

        def swap(module, args, output):
            where = args[0] == token_id
            output = output.clone()
            output[where] = vectors(int(where.sum())).to(output.dtype)
            return output

        handle = pipe.text_encoder.get_input_embeddings().register_forward_hook(swap)
        for m in modules:
            m.requires_grad_(False)
        try:
            yield token_id
        finally:
            handle.remove()
            for m, flags in zip(modules, trainable):
                for p, flag in zip(m.parameters(), flags):
                    p.requires_grad_(flag)


def denoising_inputs(pipe, latents: torch.Tensor, generator: torch.Generator):
    """(x_t, t, target) for the denoising loss: each latent noised at a uniform random timestep, and
    the noise (or, for v-prediction models, the velocity) the model should predict."""
    scheduler = pipe.scheduler
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
    x_t = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    return x_t, t, target
