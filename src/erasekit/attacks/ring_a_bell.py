"""Ring-A-Bell (Tsai et al. 2024, "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion
Models?"): a model-agnostic attack that needs only the text encoder.

The concept vector is the mean difference of the text encoder's output between prompts with the
concept and the same prompts without it. Each target prompt, its concept's
word taken out, plus η times that vector is the embedding to reach; a genetic search over
discrete prompts of a fixed length finds the one whose embedding is nearest to it. The
erased model is never queried while searching, so the prompts found hold for every erasure of the
same base model.

Where ours differs: candidates are the vocabulary's whole words (text that replays), the search
is smaller than the paper's (population 64, not 200; the steps are generations), and the concept
vector comes from the target prompts themselves, not from a separate set of prompt pairs.
"""

from __future__ import annotations

import torch

from ..errors import ErasekitError
from ..families import family_of
from ..progress import counted
from . import Attack, Found
from .tokens import decode_words, mention, word_vocabulary


def without(prompt: str, concept: str) -> str:
    return " ".join(mention(concept).sub("", prompt).split())


def concept_vector(encode, prompts: list[str], concept: str) -> torch.Tensor:
    """Mean over prompts naming the concept of E(prompt) − E(prompt without the concept's word)."""
    named = [p for p in prompts if mention(concept).search(p)]
    if not named:
        raise ErasekitError(f"no target prompt names '{concept}', so there is no concept vector to build")
    return (encode(named) - encode([without(p, concept) for p in named])).mean(0)


def word_ids(tokenizer, words: torch.Tensor) -> torch.Tensor:
    """Input ids of prompts made of whole words (rows of token ids), padded as the pipeline pads: what
    tokenising their text gives, without the tokenizer's cost (tests/test_attacks.py checks it)."""
    n, length = words.shape
    ids = torch.full((n, tokenizer.model_max_length), tokenizer.pad_token_id)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, 1:length + 1] = words
    ids[:, length + 1] = tokenizer.eos_token_id
    return ids


def encode_words(pipe, rows: torch.Tensor) -> torch.Tensor:
    """The conditioning's hidden states for prompts made of whole words (rows of the first tokenizer's
    ids): one encoder's straight from the ids, several (SDXL) through the pipeline's own encoding of their text."""
    family = family_of(pipe)
    if len(family.text_encoders(pipe)) == 1:
        return pipe.text_encoder(word_ids(pipe.tokenizer, rows).to(pipe.device))[0]
    return family.embed(pipe, [decode_words(pipe.tokenizer, row) for row in rows]).hidden


def crossover_and_mutate(parents: torch.Tensor, n: int, vocabulary: int, mutation: float, generator: torch.Generator) -> torch.Tensor:
    """n children: each takes every position from one of two random parents, and with probability
    `mutation` a random word there instead."""
    a, b = (parents[torch.randint(0, len(parents), (n,), generator=generator)] for _ in range(2))
    children = torch.where(torch.rand(a.shape, generator=generator) < 0.5, a, b)
    mutate = torch.rand(a.shape, generator=generator) < mutation
    return torch.where(mutate, torch.randint(0, vocabulary, a.shape, generator=generator), children)


class RingABell(Attack):
    name = "ring-a-bell"
    default_steps = 100
    model_agnostic = True

    def find(self, erased, concept, prompts, steps, *, sampling, progress=False, word=None, strength: float = 3.0, length: int = 16,
             population: int = 64, elite: int = 8, mutation: float = 0.05, seed: int = 0, **_) -> Found:
        """One prompt of `length` words per target prompt, the same for every seed."""
        steps = steps or self.default_steps
        family = family_of(erased)

        def encode(texts):
            return family.embed(erased, texts).hidden.float()

        word = word or concept
        vector = concept_vector(encode, prompts, word)
        goals = encode([without(p, word) for p in prompts]) + strength * vector  # (prompts, tokens, width)
        words, _ = word_vocabulary(erased)
        generator = torch.Generator("cpu").manual_seed(seed)
        pool = torch.randint(0, len(words), (len(prompts), population, length), generator=generator)
        with counted("ring-a-bell", steps, not progress) as tick, torch.no_grad():
            for _ in range(steps):
                hidden = encode_words(erased, words[pool.flatten(0, 1)])
                distance = (hidden.float().unflatten(0, pool.shape[:2]) - goals[:, None]).pow(2).mean((2, 3)).cpu()
                parents = torch.stack([row[order[:elite]] for row, order in zip(pool, distance.argsort(1))])
                pool = torch.stack([torch.cat([p, crossover_and_mutate(p, population - elite, len(words), mutation, generator)]) for p in parents])
                tick(f"distance {distance.min(1).values.mean():.4f}")
        chosen = [decode_words(erased.tokenizer, words[p[0]]) for p in parents]
        found = [(p, s, text) for p, text in zip(prompts, chosen) for s in sampling.seeds]
        return Found(found, steps=steps, images=0, details={"strength": strength, "length": length, "population": population})
