"""Concept purification (All but One, Fig. 1a and "Concept Purification"): invert an image with DDIM
(the flow ODE on SD3) using the base model, then denoise it with the erased model.

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
from ..sampling import decode, embed, encode_images, is_flow, run_sampler, sampling_scheduler, denoiser_out
from ..families import denoiser_of


@dataclass
class Purified:
    images: list[Image.Image]  # the erased model's denoising of each inverted input
    reconstructed: list[Image.Image]  # the base model's, from the same inverted latents (what inversion alone gives back)


def _guided(unet, conditioning, guidance: float):
    """The noise prediction to step with: the prompt's alone at guidance 1, else classifier-free guidance."""
    if guidance == 1.0:
        return lambda x, t, i: denoiser_out(unet, x, t, conditioning[1:].expand(x.shape[0], -1, -1))

    def guided(x, t, i):
        n = x.shape[0]
        eps_uncond, eps_cond = denoiser_out(unet, x.repeat(2, 1, 1, 1), t, torch.cat([conditioning[:1].expand(n, -1, -1), conditioning[1:].expand(n, -1, -1)])).chunk(2)
        return cfg(eps_uncond, eps_cond, guidance)

    return guided


@torch.no_grad()
def invert(pipe, latents: torch.Tensor, conditioning, steps: int, stop: int, guidance: float = 1.0) -> torch.Tensor:
    """DDIM inversion of clean latents with `pipe` through the first `stop` of `steps` steps
    (`conditioning`: the null prompt's, then the prompt's); on a flow-matching model, the flow ODE
    run backwards by Euler steps, x_σ' = x_σ + (σ' − σ) v(x_σ, σ), the velocity taken where the step starts as DDIM inversion does."""
    guided = _guided(denoiser_of(pipe), conditioning, guidance)
    if is_flow(pipe.scheduler):
        sigmas = sampling_scheduler(pipe, steps).sigmas  # from 1 down to 0: steps + 1 of them
        x = latents
        for i, k in enumerate(range(steps, steps - stop, -1)):
            t = sigmas[k] * pipe.scheduler.config.num_train_timesteps
            x = x + (sigmas[k - 1] - sigmas[k]) * guided(x, t.to(x.device), i)
        return x
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(steps)
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
        denoiser = denoiser_of(pipe)
        guided = _guided(denoiser, conditioning.to(denoiser.device), guidance)
        x = run_sampler(sampling_scheduler(pipe, steps), noisy.to(denoiser.device, denoiser.dtype), guided, start=steps - stop)  # from where the inversion stopped
        outputs.append(decode(pipe, x))
    return Purified(images=outputs[0], reconstructed=outputs[1])
