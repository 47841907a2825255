"""Concept purification (All but One, Fig. 1a and "Concept Purification"): invert an image with DDIM
using the base model, then denoise it with the erased model.

The paper reports that an AbO model trained with λ = 0 removes the concept from an image this way,
inverting with the null prompt or the concept's, and that no other method does so consistently.
`strength` is the share of the DDIM schedule inverted (1.0: all the way to noise); the paper does
not give one. Inversion uses diffusers' DDIMInverseScheduler, with the noise predicted at the
step's own timestep, as its pipelines do; that approximation needs many steps to give the image
back (the default 100 does on the built-in model, tests/test_purify.py; 35 does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMInverseScheduler
from PIL import Image

from ..errors import ErasekitError
from ..guidance import cfg
from ..sampling import run_sampler, sampling_scheduler, decode, embed, encode_images, unet_out
from ..families import denoiser_of


@dataclass
class Purified:
    images: list[Image.Image]  # the erased model's denoising of each inverted input
    reconstructed: list[Image.Image]  # the base model's, from the same inverted latents (what inversion alone gives back)


def _guided(unet, conditioning, guidance: float):
    """The noise prediction to step with: the prompt's alone at guidance 1, else classifier-free guidance."""
    if guidance == 1.0:
        return lambda x, t, i: unet_out(unet, x, t, conditioning[1:].expand(x.shape[0], -1, -1))

    def guided(x, t, i):
        n = x.shape[0]
        eps_uncond, eps_cond = unet_out(unet, x.repeat(2, 1, 1, 1), t, torch.cat([conditioning[:1].expand(n, -1, -1), conditioning[1:].expand(n, -1, -1)])).chunk(2)
        return cfg(eps_uncond, eps_cond, guidance)

    return guided


@torch.no_grad()
def invert(pipe, latents: torch.Tensor, conditioning, steps: int, stop: int, guidance: float = 1.0) -> torch.Tensor:
    """DDIM inversion of clean latents with `pipe` through the first `stop` of `steps` steps
    (`conditioning`: the null prompt's, then the prompt's)."""
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(steps)
    guided = _guided(denoiser_of(pipe), conditioning, guidance)
    x = latents
    for i, t in enumerate(inverse.timesteps[:stop]):
        x = inverse.step(guided(x, t, i), t, x).prev_sample
    return x


@torch.no_grad()
def purify(base, erased, images: list[Image.Image], prompt: str = "", strength: float = 1.0, steps: int = 100,
           guidance: float = 1.0) -> Purified:
    """Invert `images` with `base` (prompt "" is the null prompt) over `strength` of a `steps`-step DDIM
    schedule, then denoise the result with `erased`, and, for comparison, with `base`."""
    if not 0 < strength <= 1:
        raise ErasekitError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ErasekitError(f"steps must be at least 1, got {steps}")
    stop = max(1, round(strength * steps))
    conditioning = embed(base, ["", prompt])  # an erasure changes the UNet only: one embedding serves both models
    noisy = invert(base, encode_images(base, images), conditioning, steps, stop, guidance)
    outputs = []
    for pipe in (erased, base):
        scheduler = sampling_scheduler(pipe, steps)
        scheduler.timesteps = scheduler.timesteps[steps - stop:]  # start where the inversion stopped
        x = run_sampler(scheduler, noisy.to(denoiser_of(pipe).device, denoiser_of(pipe).dtype), _guided(denoiser_of(pipe), conditioning.to(denoiser_of(pipe).device), guidance))
        outputs.append(decode(pipe, x))
    return Purified(images=outputs[0], reconstructed=outputs[1])
