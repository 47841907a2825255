"""Concept inversion (Pham et al. 2024, "Circumventing Concept Erasure Methods for Text-to-Image
Generative Models"): textual inversion of a new token against the erased model.

A new token's input embedding is trained with the erased model's own denoising loss on images of
the concept (Gal et al. 2023, Eq. 2; losses.denoising_loss); the UNet and text encoder stay frozen.
If the erasure only cut the concept's word from what the UNet draws, a new word finds the way
back. The attack prompts are the target prompts with the concept's word replaced by the token.

Where ours differs: the images are the base model's own images of the target prompts (on seeds
apart from the evaluation's), kept when the detector confirms the concept, or the user's folder;
each is captioned with its prompt, the concept's word replaced by the token (a user's image: the
token alone), not with the paper's "a photo of" templates. The learned token is saved in diffusers'
textual-inversion format, so `pipe.load_textual_inversion` replays it on SD and SDXL (SD3 and FLUX
pipelines have no such loader: `learned_tokens` replays it on any).
"""

from __future__ import annotations

import torch

from ..families import denoiser_of, family_of
from ..losses import denoising_loss
from ..progress import counted
from ..sampling import encode_images, denoiser_out
from . import Attack, Found
from .tokens import concept_images, denoising_inputs, mention, placeholder, word_embeddings

TOKEN = "<concept>"


def with_token(prompt: str, concept: str, token: str) -> str:
    """The prompt with the concept's word replaced by the token (the token put first if it is not named)."""
    word = mention(concept)
    return word.sub(token, prompt) if word.search(prompt) else f"{token} {prompt}"


def initial_embedding(pipe, words: str) -> torch.Tensor:
    """The mean input embedding of the tokens of `words` (in every text encoder): where the learned token starts."""
    return word_embeddings(pipe, [words])[0]


class ConceptInversion(Attack):
    name = "inversion"
    default_steps = 300
    needs_base = True

    def find(self, erased, concept, prompts, steps, *, sampling, detector=None, base=None, images=None, progress=False, word=None, n_images: int = 32, lr: float = 5e-3, train_batch: int = 8, init: str = "something", seed: int = 0) -> Found:
        """Learn the token on `images` (or `n_images` of the base model's), then put it in every target prompt."""
        steps = steps or self.default_steps
        if images:
            captions = [TOKEN] * len(images)
        else:
            pairs = concept_images(base, concept, prompts, detector, n_images, sampling)
            captions, images = [with_token(p, word or concept, TOKEN) for p, _ in pairs], [im for _, im in pairs]
        latents = encode_images(erased, images)
        vector = torch.nn.Parameter(initial_embedding(erased, init))
        optimizer = torch.optim.Adam([vector], lr=lr)
        generator = torch.Generator("cpu").manual_seed(seed)
        encode, denoiser = family_of(erased).encode, denoiser_of(erased)
        with placeholder(erased, TOKEN, lambda n: vector.expand(n, -1)), counted("inversion", steps, not progress) as tick:
            for _ in range(steps):
                pick = torch.randint(0, len(captions), (min(train_batch, len(captions)),), generator=generator)
                x_t, t, target = denoising_inputs(erased, latents[pick], generator)
                conditioning = encode(erased, [captions[i] for i in pick])
                loss = denoising_loss(denoiser_out(denoiser, x_t, t, conditioning), target).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                tick(f"loss {loss.item():.4f}")
        found = [(p, s, with_token(p, word or concept, TOKEN)) for p in prompts for s in sampling.seeds]
        return Found(found, steps=steps, images=len(images), embeddings={TOKEN: vector.detach().clone()},
                     details={"lr": lr, "train_batch": train_batch, "init": init})
