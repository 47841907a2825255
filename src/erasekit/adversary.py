"""Adversarial training on the teacher bank: an attacker that brings the concept back on the current
student, and the method's concept loss applied where it does (AdvUnlearn's bi-level loop, Zhang et
al. 2024).

  inner:  a ← argmin_a  ‖ε_θ(x_t, e(a)) − ε*(x_t, c)‖²
  outer:  the method's concept loss with e(a) in place of e_c, weighed `adversary_weight`.

ε*(x_t, c) is the frozen model's output at x_t, kept in the teacher bank beside the targets: a
student that still gives it under an attacked conditioning e(a) still draws c from there. The bank's
targets do not depend on the prompt the student sees, so the same targets serve the attacked one.

Two spaces the attacker `a` may move in (`adversary`):
- "embedding" (`Adversary`): δ added to the concept's prompt embedding e_c (the text encoders'
  output that the denoiser reads, `Conditioning.hidden`), within a ball ‖δ‖ ≤ ρ ‖e_c‖. It is the one
  input every family shares, and no change to the text encoder can answer an attack there.
- "token" (`TokenAdversary`): one learned input token per concept, read through the text encoders,
  with no bound: the space concept inversion searches (Pham et al. 2024), which the ball does not
  reach (its tokens lie far from the word's embedding: benchmarks/results/tuning-adversary/results.md).

The inner problem gets one step per training step, warm-started from the last one (free adversarial
training, Shafahi et al. 2019): the attack grows stronger as training goes on, at about one more
student pass per step, where AdvUnlearn spends 30 attack steps per update.
"""

from __future__ import annotations

import torch

from .attacks.tokens import token_rows, word_embeddings
from .families import Conditioning, family_of
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

    def state(self) -> dict[str, torch.Tensor]:
        return {"adversary": self.delta}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.delta = state["adversary"].to(self.delta.device)


class TokenAdversary:
    """The attacker's state: one learned input token per erased concept (its vector spans every text
    encoder, as concept inversion's does) and its Adam moments, kept across training steps (and in
    checkpoints). It starts at each concept's own words (`init`: other words, one per concept), where
    it gives the unerased model's e_c exactly, and follows the concept as the student unlearns it."""

    TOKEN = "<adversary>"

    def __init__(self, pipe, concepts: list[str], lr: float, device, init: list[str] | None = None):
        self.pipe, self.encode = pipe, family_of(pipe).encode
        self.vector = torch.nn.Parameter(word_embeddings(pipe, init or concepts).to(device))
        self.optimizer = torch.optim.Adam([self.vector], lr=lr)  # concept inversion's optimiser (attacks/inversion.py)
        self.live = False  # the text encoders train: the attacked conditioning keeps their gradient, as AdvUnlearn's word_embd attack does

    def conditioning(self, concept: torch.Tensor) -> Conditioning:
        """e(a_c) for a batch of concept indices: the prompt "<adversary>", its token's rows a_c (fixed:
        no gradient reaches them; the text encoders' reaches those while they train)."""
        with torch.set_grad_enabled(self.live), token_rows(self.pipe, self.TOKEN, lambda n: self.vector[concept].detach()):
            return self.encode(self.pipe, [self.TOKEN] * len(concept))

    def attack(self, denoiser, x: torch.Tensor, t: torch.Tensor, concept: torch.Tensor, wanted: torch.Tensor) -> Conditioning:
        """One Adam step of the inner problem on a drawn batch (x_t, t, its concepts, ε*(x_t, c)); returns
        the attacked conditioning of the batch. Only the tokens get a gradient: the student's stays as it was."""
        prompts = [self.TOKEN] * len(concept)
        with token_rows(self.pipe, self.TOKEN, lambda n: self.vector[concept]):  # entered once: it copies each tokenizer's state
            loss = denoising_loss(denoiser_out(denoiser, x, t, self.encode(self.pipe, prompts)), wanted).mean()
            (self.vector.grad,) = torch.autograd.grad(loss, self.vector)
            self.optimizer.step()
        return self.conditioning(concept)  # the tokens as they are now, after the step

    def state(self) -> dict[str, torch.Tensor]:
        moments = self.optimizer.state.get(self.vector, {})
        return {"adversary_token": self.vector.detach()} | {f"adversary_{k}": v for k, v in moments.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.vector.copy_(state["adversary_token"])
        # Adam keeps its step count on the CPU (unless capturable); the moments live beside the tokens.
        moments = {k.removeprefix("adversary_"): v if k == "adversary_step" else v.to(self.vector.device) for k, v in state.items() if k != "adversary_token"}
        if moments:
            self.optimizer.state[self.vector] = moments
