"""What the attacks that work on prompt tokens share: the vocabulary they search, a hook that puts
chosen vectors in place of a placeholder token, images of the concept, and the denoising loss's
inputs (a noised image and what the model should predict from it).

A token's vector spans every text encoder of the pipeline, side by side (SDXL: its first encoder's
width, then its second's), so the same attacks learn tokens for one encoder or two.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from ..api import Sampling
from ..errors import ErasekitError
from ..families import denoiser_of, family_of
from ..sampling import training_noise


def text_pairs(pipe) -> list[tuple]:
    """(tokenizer, text encoder) of every text encoder the pipeline conditions on."""
    family = family_of(pipe)
    return list(zip(family.tokenizers(pipe), family.text_encoders(pipe)))


def split_widths(pipe, vector: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A vector spanning every text encoder, cut into each encoder's part."""
    return vector.split([encoder.get_input_embeddings().weight.shape[1] for _, encoder in text_pairs(pipe)], dim=-1)


def word_embeddings(pipe, texts: list[str]) -> torch.Tensor:
    """(len(texts), sum of widths): the mean input embedding of each text's tokens in every text encoder,
    side by side (each tokenizer splits the text its own way: CLIP's BPE, T5's SentencePiece)."""
    return torch.cat([torch.stack([encoder.get_input_embeddings().weight[tokenizer(text, add_special_tokens=False).input_ids].detach().float().mean(0)
                                   for text in texts]) for tokenizer, encoder in text_pairs(pipe)], dim=-1)


def word_tokens(tokenizer) -> torch.Tensor:
    """Ids of the vocabulary's whole words (BPE tokens of letters that end a word), which decode to text
    that tokenises back to the same ids; word pieces, punctuation and the special tokens are left out."""
    return torch.tensor(sorted(i for t, i in tokenizer.get_vocab().items() if re.fullmatch(r"[a-z]+</w>", t)))


def word_vocabulary(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole words every tokenizer of the pipeline holds as one token: their ids in the first
    tokenizer, and their input embeddings in every text encoder, side by side."""
    pairs = text_pairs(pipe)
    ids = word_tokens(pairs[0][0])
    tokens = pairs[0][0].convert_ids_to_tokens(ids.tolist())
    each = [_token_ids(tokenizer, tokens) for tokenizer, _ in pairs]
    kept = [i for i in range(len(tokens)) if all(ids_of[i] is not None for ids_of in each)]
    vectors = [encoder.get_input_embeddings().weight[[ids_of[i] for i in kept]].detach().float() for (_, encoder), ids_of in zip(pairs, each)]
    return ids[kept], torch.cat(vectors, dim=-1)


def _token_ids(tokenizer, tokens: list[str]) -> list[int | None]:
    """Each whole-word token's id in `tokenizer`: the same token's where its vocabulary has it (CLIP's
    "red</w>"), else the word's where it is one token (T5's "▁red"), else None."""
    vocabulary = tokenizer.get_vocab()
    pieces = tokenizer([t.removesuffix("</w>") for t in tokens], add_special_tokens=False).input_ids
    return [vocabulary.get(t, p[0] if len(p) == 1 and p[0] != tokenizer.unk_token_id else None) for t, p in zip(tokens, pieces)]


def decode_words(tokenizer, ids) -> str:
    return " ".join(tokenizer.convert_ids_to_tokens([int(i) for i in ids])).replace("</w>", "")


def mention(concept: str) -> re.Pattern:
    """The concept as a whole word in a prompt."""
    return re.compile(rf"\b{re.escape(concept)}\b")


def concept_images(base, concept: str, prompts: list[str], detector, n: int, sampling: Sampling, seed: int = 10_000) -> list:
    """Up to `n` (prompt, image) pairs of the concept from the base model, drawn as `sampling` says
    but on seeds from `seed` on (apart from the evaluation's), keeping the images the detector confirms."""
    jobs = [(prompts[i % len(prompts)], seed + i, sampling.guidance) for i in range(n)]
    images = sampling.generate(base, jobs)
    kept = [(prompt, im) for (prompt, _, _), im, flag in zip(jobs, images, detector.detect(images, concept).flags) if flag]
    if not kept:
        raise ErasekitError(f"the base model drew no image the detector takes for '{concept}': nothing to learn it from")
    return kept


@contextmanager
def token_rows(pipe, token: str, vectors):
    """While inside, each text encoder sees its part of `vectors(n)` ((n, sum of widths): one row per
    occurrence, in reading order) where prompts hold `token`, which is in the tokenizers for the while.
    Nothing is frozen: a caller that wants gradients only in what `vectors` is made of asks for them
    alone (`torch.autograd.grad`), or freezes the rest (`placeholder`)."""
    from . import learned_tokens

    pairs = text_pairs(pipe)
    widths = [encoder.get_input_embeddings().weight.shape[1] for _, encoder in pairs]
    with learned_tokens(pipe, {token: torch.zeros(sum(widths))}):
        handles = []
        for k, (tokenizer, encoder) in enumerate(pairs):
            token_id, start = tokenizer.convert_tokens_to_ids(token), sum(widths[:k])

            def swap(module, args, output, token_id=token_id, start=start, width=widths[k]):
                where = args[0] == token_id
                output = output.clone()
                output[where] = vectors(int(where.sum()))[:, start : start + width].to(output.dtype)
                return output

            handles.append(encoder.get_input_embeddings().register_forward_hook(swap))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def placeholder(pipe, token: str, vectors):
    """`token_rows` with the UNet and text encoders frozen for the while, so that gradients reach only
    what `vectors` is made of."""
    modules = [denoiser_of(pipe), *(encoder for _, encoder in text_pairs(pipe))]
    trainable = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.requires_grad_(False)
    try:
        with token_rows(pipe, token, vectors):
            yield
    finally:
        for m, flags in zip(modules, trainable):
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


def denoising_inputs(pipe, latents: torch.Tensor, generator: torch.Generator):
    """(x_t, t, target) for the denoising loss, as the model was trained (sampling.training_noise)."""
    return training_noise(pipe.scheduler, latents, generator)
