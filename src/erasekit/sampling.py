"""Sampling with a guidance hook, noising for training losses, text embedding, and encoding and
decoding images; shared by the bank, the methods, the attacks and the reference.

The hook `guided(x, t, i)` returns the model output to step with at timestep t (sampling-step
index i, 0 = noisiest); callers record in it whatever they need along the trajectory. Each family
samples as its pipeline does: DDIM (η = 0; epsilon and v-prediction alike) for Stable Diffusion
and SDXL, flow-matching Euler for SD3 and FLUX, stepped by the diffusers scheduler the family names
and set as its pipeline sets it (`Family.set_timesteps`).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .families import Conditioning, denoiser_of, family_of

Guided = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def sampling_scheduler(pipe, steps: int):
    """A fresh scheduler of the family's sampler (`Family.sampler`) on the pipeline's noise schedule, set to `steps` steps."""
    import diffusers

    family = family_of(pipe)
    scheduler = getattr(diffusers, family.sampler).from_config(pipe.scheduler.config)
    family.set_timesteps(scheduler, steps, latent_shape(pipe))
    return scheduler


def is_flow(scheduler) -> bool:
    """Whether the schedule is flow matching (x_t = (1 − σ) x0 + σ ε, the model predicting ε − x0)."""
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


@torch.no_grad()
def run_sampler(scheduler, x: torch.Tensor, guided: Guided, stop: int | None = None, start: int = 0) -> torch.Tensor:
    """Step x from step index `start` (0: x_T) through stop-1 (the end when stop is None); returns x at step index `stop`."""
    scheduler = copy.copy(scheduler)  # a flow-matching scheduler counts its steps: each run keeps its own count
    if is_flow(scheduler):
        scheduler.set_begin_index(start)
    for i, t in enumerate(scheduler.timesteps[start:stop], start):
        x = scheduler.step(guided(x, t, i), t, x).prev_sample
    return x


def training_noise(scheduler, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) of the model's own training loss: each latent noised at a uniform random time,
    and what the model should predict there: the noise, the velocity of v-prediction models, or
    ε − x0 for flow matching (at timestep 1000 σ, σ uniform in (0, 1))."""
    if is_flow(scheduler):
        sigma = torch.rand((x0.shape[0],), generator=generator).to(x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        return x_t, sigma * scheduler.config.num_train_timesteps, noise - x0
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    return scheduler.add_noise(x0, noise, t), t, target


def denoiser_out(denoiser, x: torch.Tensor, t, conditioning: Conditioning) -> torch.Tensor:
    """One denoiser call for a batch (the UNet, or SD3's and FLUX's transformer); `t` a scalar or per-sample timesteps."""
    if not torch.is_tensor(t) or t.dim() == 0:
        t = torch.full((x.shape[0],), t.item() if torch.is_tensor(t) else t, device=x.device)
    return conditioning.denoise(denoiser, x, t.to(x.device))


def embed(pipe, prompts: list[str]) -> Conditioning:
    """The UNet's conditioning for prompts, exactly as the pipeline conditions it ("" is unconditional)."""
    return family_of(pipe).embed(pipe, prompts)


def initial_noise(n: int, shape: tuple[int, ...], generator: torch.Generator, scheduler) -> torch.Tensor:
    """x_T ~ N(0, I) scaled by the scheduler's initial sigma, drawn on the CPU for device-independent seeds."""
    return torch.randn((n, *shape), generator=generator) * noise_scale(scheduler)


def noise_scale(scheduler) -> float:
    """What x_T is ε times: the schedule's initial sigma, or 1 for flow matching, which starts at x_T = ε."""
    return 1.0 if is_flow(scheduler) else scheduler.init_noise_sigma


def latent_shape(pipe) -> tuple[int, int, int]:
    """(channels, height, width) of the latents the pipeline draws by default (Family.latent_shape)."""
    return family_of(pipe).latent_shape(denoiser_of(pipe).config, pipe.vae.config)


@torch.no_grad()
def encode_images(pipe, images) -> torch.Tensor:
    """Images to latents (the VAE posterior's mean, shifted and scaled), resized to the pipeline's size."""
    size = latent_shape(pipe)[1] * pipe.vae_scale_factor
    x = pipe.image_processor.preprocess(images, height=size, width=size).to(pipe.vae.device, pipe.vae.dtype)
    return (pipe.vae.encode(x).latent_dist.mean - _shift(pipe.vae)) * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """Latents to images, as the pipeline's own call ends."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor + _shift(pipe.vae)).sample
    return pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * latents.shape[0])


def _shift(vae) -> float:
    """The VAE's latent mean, taken off before scaling (SD3's and FLUX's VAEs; none in SD's)."""
    return getattr(vae.config, "shift_factor", None) or 0.0
