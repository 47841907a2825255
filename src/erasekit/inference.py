"""Inference-time erasure: methods that change how a model is sampled, not its weights.

neg-prompt: the concept as the negative prompt of classifier-free guidance.
sld: Safe Latent Diffusion (Schramowski et al., CVPR 2023), guidance away from the concept with
the paper's four presets. diffusers' own SLD pipeline is deprecated, so erasekit samples it with
its DDIM loop (sampling.py) and the pure guidance term (guidance.sld_safety_term); the result is
a drop-in for a pipeline wherever erasekit generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .errors import ErasekitError
from .guidance import sld_safety_term
from .sampling import ddim_sample, ddim_scheduler, decode, embed, latent_shape, unet_out

INFERENCE_METHODS = ("neg-prompt", "sld")


@dataclass(frozen=True)
class SldSettings:
    warmup_steps: int = 10
    guidance_scale: float = 1000.0  # s_S
    threshold: float = 0.01  # λ
    momentum_scale: float = 0.3  # s_m
    momentum_beta: float = 0.4  # β_m


# The paper's hyper-parameter sets (Table 1 of Schramowski et al.; diffusers' SafetyConfig).
SLD_PRESETS = {
    "weak": SldSettings(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SldSettings(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SldSettings(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SldSettings(0, 5000.0, 1.0, 0.5, 0.7),
}


class SldPipeline:
    """Call it like a StableDiffusionPipeline (prompt, generator list, steps, guidance): SLD-guided DDIM.

    Initial noise is drawn per image from its generator exactly as diffusers does, so an image
    compares with the base pipeline's image of the same seed.
    """

    def __init__(self, pipe, concept: str, settings: SldSettings):
        self.pipe, self.settings = pipe, settings
        self.safety = embed(pipe, [concept])

    @torch.no_grad()
    def __call__(self, prompt, generator, num_inference_steps, guidance_scale, negative_prompt=None, output_type="pil"):
        pipe, s = self.pipe, self.settings
        n = len(prompt)
        cond, uncond = pipe.encode_prompt(prompt, pipe.device, 1, True, negative_prompt)
        embeddings = torch.cat([uncond, cond, self.safety.expand(n, -1, -1)])
        scheduler = ddim_scheduler(pipe, num_inference_steps)
        x = torch.cat([torch.randn((1, *latent_shape(pipe)), generator=g, dtype=cond.dtype) for g in generator]).to(pipe.device) * scheduler.init_noise_sigma
        momentum = torch.zeros_like(x)

        def guided(x, t, i):
            nonlocal momentum
            eps_uncond, eps_text, eps_safety = unet_out(pipe.unet, x.repeat(3, 1, 1, 1), t, embeddings).chunk(3)
            gamma, momentum = sld_safety_term(eps_uncond, eps_text, eps_safety, momentum, s.guidance_scale, s.threshold, s.momentum_scale, s.momentum_beta)
            guidance = eps_text - eps_uncond - (gamma if i >= s.warmup_steps else 0)
            return eps_uncond + guidance_scale * guidance

        return SimpleNamespace(images=decode(pipe, ddim_sample(scheduler, x, guided), output_type))


def inference_method(pipe, method: str, concept: str, preset: str | None = None):
    """(pipeline to sample with, negative prompt) for an inference-time method; `preset` is SLD's."""
    if method == "neg-prompt":
        return pipe, concept
    if method == "sld":
        preset = preset or "medium"
        if preset not in SLD_PRESETS:
            raise ErasekitError(f"unknown SLD preset '{preset}': use {', '.join(SLD_PRESETS)}")
        return SldPipeline(pipe, concept, SLD_PRESETS[preset]), None
    raise ErasekitError(f"unknown inference-time method '{method}': use {', '.join(INFERENCE_METHODS)}")
