"""Adversarial training on the teacher bank: an attacker that brings the concept back on the current
student, and the method's concept loss applied where it does (AdvUnlearn's bi-level loop, Zhang et
al. 2024, with the attack on the prompt embedding rather than on the prompt's tokens).

The attacker moves each erased concept's prompt embedding e_c (the text encoders' output that the
denoiser reads, `Conditioning.hidden`) within a ball of radius ρ ‖e_c‖:

  inner:  δ_c ← argmin_{‖δ‖ ≤ ρ ‖e_c‖}  ‖ε_θ(x_t, e_c + δ) − ε*(x_t, c)‖²
  outer:  the method's concept loss with e_c + δ_c in place of e_c, weighed `adversary_weight`.

ε*(x_t, c) is the frozen model's output at x_t, kept in the teacher bank beside the targets: a
student that still gives it under an embedding near e_c still draws c from there. The bank's
targets do not depend on the prompt the student sees, so the same targets serve the attacked
embedding.

Why the embedding and not tokens: every token attack (concept inversion, UnlearnDiffAtk) reaches
only embeddings the text encoder can produce, no change to the text encoder can answer an attack on
its output (only one to the denoiser can), and the embedding is the one input every family shares.

The inner problem gets one normalised, projected gradient step per training step, warm-started
from the last one (free adversarial training, Shafahi et al. 2019): the attack grows stronger as
training goes on, at about one more student pass per step, where AdvUnlearn spends 30 attack steps
per update.
"""

from __future__ import annotations

import torch

from .families import Conditioning
from .losses import denoising_loss
from .sampling import denoiser_out


def project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Each concept's δ (n, tokens, width) scaled back onto the ball ‖δ‖ ≤ radius (n,) where it lies outside."""
    norm = delta.flatten(1).norm(dim=1)
    return delta * (radius / norm.clamp_min(1e-12)).clamp(max=1.0)[:, None, None]


def descend(delta: torch.Tensor, grad: torch.Tensor, step: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """One projected step of length `step` (n,) against each concept's gradient direction; a concept
    without gradient (none of its rows in the batch) stays where it is."""
    norm = grad.flatten(1).norm(dim=1)
    moved = delta - (step * (norm > 0) / norm.clamp_min(1e-12))[:, None, None] * grad
    return project(moved, radius)


class Adversary:
    """The attacker's state: one δ per erased concept, kept across training steps (and in checkpoints)."""

    def __init__(self, concept_emb: Conditioning, radius: float, step: float):
        self.concept_emb = concept_emb
        size = concept_emb.hidden.detach().float().flatten(1).norm(dim=1)
        self.radius, self.step = radius * size, step * radius * size  # ρ ‖e_c‖ and the step length, per concept
        self.delta = torch.zeros(concept_emb.hidden.shape, device=concept_emb.hidden.device)

    def conditioning(self, concept: torch.Tensor, delta: torch.Tensor | None = None) -> Conditioning:
        """e_c + δ_c for a batch of concept indices (the family's extra inputs, SDXL's pooled embedding, unchanged)."""
        own = self.concept_emb[concept]
        delta = self.delta if delta is None else delta
        return type(own)(own.hidden + delta[concept].to(own.hidden.dtype), own.added)

    def attack(self, denoiser, x: torch.Tensor, t: torch.Tensor, concept: torch.Tensor, wanted: torch.Tensor) -> Conditioning:
        """One step of the inner problem on a drawn batch (x_t, t, its concepts, ε*(x_t, c)); returns
        the attacked conditioning of the batch. Only δ gets a gradient: the denoiser's stays as it was."""
        delta = self.delta.clone().requires_grad_(True)
        loss = denoising_loss(denoiser_out(denoiser, x, t, self.conditioning(concept, delta)), wanted).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        self.delta = descend(self.delta, grad.float(), self.step, self.radius)
        return self.conditioning(concept)
