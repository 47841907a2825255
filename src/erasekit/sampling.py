"""DDIM sampling with a guidance hook, text embedding, and encoding and decoding images; shared by the bank, the methods and the reference.

The hook `guided(x, t, i)` returns the model output to step with at timestep t (sampling-step
index i, 0 = noisiest); callers record in it whatever they need along the trajectory. Stepping is
diffusers' `DDIMScheduler.step` with η = 0, so epsilon and v-prediction models both work.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler

from .families import Conditioning, family_of

Guided = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def ddim_scheduler(pipe, steps: int) -> DDIMScheduler:
    """A fresh DDIM scheduler of the pipeline's noise schedule, set to `steps` steps."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def ddim_sample(scheduler: DDIMScheduler, x: torch.Tensor, guided: Guided, stop: int | None = None) -> torch.Tensor:
    """Run DDIM from x_T through steps 0..stop-1 (all when stop is None); returns x at step index `stop`."""
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps[:stop]):
        x = scheduler.step(guided(x, t, i), t, x, eta=0.0).prev_sample
    return x


def unet_out(unet, x: torch.Tensor, t, conditioning: Conditioning) -> torch.Tensor:
    """One UNet call for a batch; `t` a scalar or per-sample timesteps."""
    if not torch.is_tensor(t) or t.dim() == 0:
        t = torch.full((x.shape[0],), int(t), device=x.device)
    return unet(x, t.to(x.device), **conditioning.unet_kwargs(x.dtype)).sample


def embed(pipe, prompts: list[str]) -> Conditioning:
    """The UNet's conditioning for prompts, exactly as the pipeline conditions it ("" is unconditional)."""
    return family_of(pipe).embed(pipe, prompts)


def initial_noise(n: int, shape: tuple[int, ...], generator: torch.Generator, scheduler: DDIMScheduler) -> torch.Tensor:
    """x_T ~ N(0, I) scaled by the scheduler's initial sigma, drawn on the CPU for device-independent seeds."""
    return torch.randn((n, *shape), generator=generator) * scheduler.init_noise_sigma


def latent_shape(pipe) -> tuple[int, int, int]:
    size = pipe.unet.config.sample_size
    return (pipe.unet.config.in_channels, size, size)


@torch.no_grad()
def encode_images(pipe, images) -> torch.Tensor:
    """Images to latents (the VAE posterior's mean, scaled), resized to the pipeline's size."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    x = pipe.image_processor.preprocess(images, height=size, width=size).to(pipe.vae.device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """Latents to images, as the pipeline's own call ends."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * latents.shape[0])
