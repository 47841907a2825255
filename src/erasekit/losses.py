"""The erasure losses, each a pure function of model outputs that matches its paper's equation.

‖·‖² is taken as the mean over elements (as the papers' code does with MSE), so that a loss does
not grow with the latent size; it is computed in float32 whatever the model's outputs are in.
"""

from __future__ import annotations

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).mean()


def esd_target(eps_from: torch.Tensor, eps_concept: torch.Tensor, eps_uncond: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's target (Gandikota et al. 2023, Eq. 5 and esd_sd.py): ε*(x_t, c_from) − η (ε*(x_t, c) − ε*(x_t, ∅)).

    All three come from the frozen model; c_from is ∅ unless erasing "towards" another concept.
    """
    return eps_from - eta * (eps_concept - eps_uncond)


def esd_loss(eps_student_concept: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_ESD = ‖ε_θ(x_t, c) − target‖²; the target carries no gradient."""
    return mse(eps_student_concept, target.detach())


def abo_guidance_target(eps_concept: torch.Tensor, eps_uncond: torch.Tensor, delta: torch.Tensor, gamma1: float) -> torch.Tensor:
    """The concept loss's target, γ1 (ε*(x_t, c) − ε*(x_t, ∅)) + δ(C_I, x_t, θ*) (AbO, Algorithm 1, line 11).

    Eq. 13 of the paper prints "− γ1(…) + δ", which would subtract δ from the target; Algorithm 1
    brackets "(γ1(…) + δ)", the same guidance that drew x_t (lines 5–7). The student must learn the
    guidance that sampling used, so we follow Algorithm 1.
    """
    return gamma1 * (eps_concept - eps_uncond) + delta


def abo_concept_loss(eps_student_concept: torch.Tensor, eps_student_uncond: torch.Tensor, target: torch.Tensor, gamma2: float) -> torch.Tensor:
    """L_concept = ‖γ2 (ε_θ(x_t, c) − sg[ε_θ(x_t, ∅)]) − target‖² (AbO, Eq. 12/13, Algorithm 1 line 11).

    The stop-gradient keeps this loss from moving the unconditional score; only the penalty does.
    """
    return mse(gamma2 * (eps_student_concept.float() - eps_student_uncond.detach().float()), target.detach())


def abo_penalty(eps_student_uncond: torch.Tensor, eps_frozen_uncond: torch.Tensor) -> torch.Tensor:
    """L_penalty = ‖ε_θ(x_t, ∅) − ε*(x_t, ∅)‖² (AbO, Eq. 12, Algorithm 1 line 12); gradient flows through ε_θ."""
    return mse(eps_student_uncond, eps_frozen_uncond.detach())


def abo_loss(
    eps_student_concept: torch.Tensor, eps_student_uncond: torch.Tensor, target: torch.Tensor,
    eps_frozen_uncond: torch.Tensor, gamma2: float, lam: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_concept + λ L_penalty (AbO, Algorithm 1 line 13); returns the loss and its terms."""
    concept = abo_concept_loss(eps_student_concept, eps_student_uncond, target, gamma2)
    penalty = abo_penalty(eps_student_uncond, eps_frozen_uncond)
    return concept + lam * penalty, {"concept": concept.item(), "penalty": penalty.item()}


def ablating_loss(eps_student_concept: torch.Tensor, eps_student_anchor: torch.Tensor) -> torch.Tensor:
    """Ablating Concepts, model-based (Kumari et al. 2023, Eq. 3): ‖ε_θ(x_t, c) − sg[ε_θ(x_t, c*)]‖²,
    x_t a noised image of the anchor concept c*."""
    return mse(eps_student_concept, eps_student_anchor.detach())


def sdd_loss(eps_student_concept: torch.Tensor, eps_ema_uncond: torch.Tensor) -> torch.Tensor:
    """Safe self-distillation (Kim et al. 2023, Eq. 4): ‖ε_θ(x_t, c) − sg[ε_θ⁻(x_t, ∅)]‖², θ⁻ the EMA teacher."""
    return mse(eps_student_concept, eps_ema_uncond.detach())


def fmn_loss(attention_maps: list[torch.Tensor]) -> torch.Tensor:
    """Forget-Me-Not attention re-steering (Zhang et al. 2023): the squared norm of the cross-attention
    probabilities on the concept's tokens, averaged over layers. Each map: (B·heads, queries, concept tokens)."""
    return torch.stack([a.pow(2).sum(-1).mean() for a in attention_maps]).mean()


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The diffusion model's own training loss on a real image, ‖ε_θ(x_t, c) − ε‖² (Ho et al. 2020, Eq. 14),
    with the velocity in place of ε for v-prediction models. An attack minimises it over the prompt:
    over a new token's embedding in concept inversion (Gal et al. 2023, Eq. 2; Pham et al. 2024), over
    discrete prompt tokens in UnlearnDiffAtk (Zhang et al. 2024). One loss per sample (batch,)."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def ema_update(ema: torch.Tensor, live: torch.Tensor, decay: float) -> None:
    """θ⁻ ← decay θ⁻ + (1 − decay) θ, in place (SDD's teacher)."""
    ema.mul_(decay).add_(live.detach(), alpha=1 - decay)
