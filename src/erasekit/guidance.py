"""Pure tensor functions for guidance: classifier-free guidance and the explicit erasing signal δ.

Shapes: every eps is (B, C, H, W); per-sample operations reduce over (C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε(∅) + s (ε(c) − ε(∅))."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sega_mask(delta: torch.Tensor, kappa: float) -> torch.Tensor:
    """β of AbO's explicit δ (after SEGA): 1 where |Δ| ≥ the κ-th percentile of |Δ|, per sample.

    kappa in [0, 1): 0.9 keeps the largest 10% of elements of each sample.
    """
    if not 0.0 <= kappa < 1.0:
        raise ValueError(f"kappa must be in [0, 1), got {kappa}")
    magnitude = delta.abs().flatten(1)
    threshold = torch.quantile(magnitude.float(), kappa, dim=1, keepdim=True).to(magnitude.dtype)
    return (magnitude >= threshold).view_as(delta)


@dataclass(frozen=True)
class Instruction:
    """One instruction concept c'' of C_I: a prompt, a signed scale g, a percentile κ, and when it acts.

    `start`/`end` bound the window of sampling-step indices (0 = first, noisiest step) in which the
    concept guides (B_c of the paper); `warmup` is the first step index at which it may (B_w).
    """

    prompt: str
    scale: float
    kappa: float = 0.9
    warmup: int = 5
    start: int = 0
    end: int | None = None

    def active(self, step_index: int) -> bool:
        return step_index >= max(self.warmup, self.start) and (self.end is None or step_index <= self.end)


def explicit_delta(
    eps_uncond: torch.Tensor, eps_instructions: list[torch.Tensor], instructions: list[Instruction], step_index: int
) -> torch.Tensor:
    """δ(C_I, x_t) = Σ_{c''} g_{c''} β(c'', x_t) Δ(c'', x_t), with Δ = ε*(x_t, c'') − ε*(x_t, ∅).

    The paper writes Δ as −sqrt(1 − ᾱ)(∇log P(x_t|c'') − ∇log P(x_t)), which is the same thing in
    ε-space since ε = −sqrt(1 − ᾱ) ∇log P.
    """
    delta = torch.zeros_like(eps_uncond)
    for eps_c, instruction in zip(eps_instructions, instructions):
        if instruction.active(step_index):
            diff = eps_c - eps_uncond
            delta = delta + instruction.scale * sega_mask(diff, instruction.kappa) * diff
    return delta


def sld_safety_term(eps_uncond: torch.Tensor, eps_text: torch.Tensor, eps_safety: torch.Tensor, momentum: torch.Tensor,
                    scale: float, threshold: float, momentum_scale: float, momentum_beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Safe Latent Diffusion's safety guidance γ_t and the next momentum ν_{t+1} (Schramowski et al. 2023).

    μ = min(s_S |ε(c_p) − ε(S)|, 1) where ε(c_p) − ε(S) < λ, else 0       (Eq. 6)
    γ_t = μ ⊙ (ε(S) − ε(∅)) + s_m ν_t                                      (Eqs. 4, 7)
    ν_{t+1} = β_m ν_t + (1 − β_m) γ_t                                       (Eq. 8)
    The guided prediction is ε(∅) + s_g (ε(c_p) − ε(∅) − γ_t) once past the warm-up (Eq. 3).
    """
    diff = eps_text - eps_safety
    mu = torch.where(diff < threshold, torch.clamp(diff.abs() * scale, max=1.0), torch.zeros_like(diff))
    gamma = mu * (eps_safety - eps_uncond) + momentum_scale * momentum
    return gamma, momentum_beta * momentum + (1 - momentum_beta) * gamma
