"""SLD: Safe Latent Diffusion (Schramowski et al., CVPR 2023), an inference-time method.

Guidance away from the concept, with the paper's four hyper-parameter sets as presets (weak,
medium, strong, max; medium the default). diffusers' own SLD pipeline is deprecated, so erasekit
samples it with its DDIM loop (sampling.py) and the pure guidance term (guidance.sld_safety_term);
the result is a drop-in for a pipeline wherever erasekit generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..errors import ErasekitError
from ..guidance import sld_safety_term
from ..sampling import decode, embed, latent_shape, noise_scale, run_sampler, sampling_scheduler, denoiser_out
from .base import InferenceMethod, SteeredPipeline
from ..families import denoiser_of


@dataclass
class SldConfig:
    warmup_steps: int = 10
    guidance_scale: float = 1000.0  # s_S
    threshold: float = 0.01  # λ
    momentum_scale: float = 0.3  # s_m
    momentum_beta: float = 0.4  # β_m

    def validate(self) -> None:
        if self.warmup_steps < 0 or self.guidance_scale < 0 or not 0 <= self.momentum_beta < 1:
            raise ErasekitError("sld: warmup_steps and guidance_scale must be >= 0, momentum_beta in [0, 1)")


# The paper's hyper-parameter sets (Table 1 of Schramowski et al.; diffusers' SafetyConfig).
PRESETS = {
    "weak": dict(warmup_steps=15, guidance_scale=20.0, threshold=0.0, momentum_scale=0.0, momentum_beta=0.0),
    "medium": dict(warmup_steps=10, guidance_scale=1000.0, threshold=0.01, momentum_scale=0.3, momentum_beta=0.4),
    "strong": dict(warmup_steps=7, guidance_scale=2000.0, threshold=0.025, momentum_scale=0.5, momentum_beta=0.7),
    "max": dict(warmup_steps=0, guidance_scale=5000.0, threshold=1.0, momentum_scale=0.5, momentum_beta=0.7),
}


class Sld(InferenceMethod):
    name = "sld"
    Config = SldConfig
    presets = PRESETS

    @classmethod
    def steer(cls, pipe, concept, config):
        return SldPipeline(pipe, concept, config)


class SldPipeline(SteeredPipeline):
    """Call it like a StableDiffusionPipeline (prompt, generator list, steps, guidance): SLD-guided DDIM.

    Initial noise is drawn per image from its generator exactly as diffusers does, so an image
    compares with the base pipeline's image of the same seed.
    """

    def __init__(self, pipe, concept: str, settings: SldConfig):
        super().__init__(pipe)
        self.settings = settings
        self.safety = embed(pipe, [concept])

    @torch.no_grad()
    def __call__(self, prompt, generator, num_inference_steps, guidance_scale, negative_prompt=None, output_type="pil", **_size_and_true_cfg):
        # generate_batch also passes the model's own size, which SLD draws at anyway (latent_shape), and for
        # FLUX the true-CFG scale a negative prompt needs there: SLD's guidance always has its negative branch
        pipe, s = self.pipe, self.settings
        n = len(prompt)
        negatives = [negative_prompt] * n if isinstance(negative_prompt, str) else (negative_prompt or [""] * n)
        cond, uncond = embed(pipe, prompt), embed(pipe, negatives)
        embeddings = torch.cat([uncond, cond, self.safety.expand(n, -1, -1)])
        scheduler, denoiser = sampling_scheduler(pipe, num_inference_steps), denoiser_of(pipe)
        x = torch.cat([torch.randn((1, *latent_shape(pipe)), generator=g, dtype=denoiser.dtype) for g in generator]).to(pipe.device) * noise_scale(scheduler)
        momentum = torch.zeros_like(x)

        def guided(x, t, i):
            nonlocal momentum
            eps_uncond, eps_text, eps_safety = denoiser_out(denoiser, x.repeat(3, 1, 1, 1), t, embeddings).chunk(3)
            gamma, momentum = sld_safety_term(eps_uncond, eps_text, eps_safety, momentum, s.guidance_scale, s.threshold, s.momentum_scale, s.momentum_beta)
            guidance = eps_text - eps_uncond - (gamma if i >= s.warmup_steps else 0)
            return eps_uncond + guidance_scale * guidance

        return SimpleNamespace(images=decode(pipe, run_sampler(scheduler, x, guided), output_type))
