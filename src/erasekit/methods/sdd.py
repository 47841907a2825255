"""SDD: Towards Safe Self-Distillation of Internet-Scale Text-to-Image Diffusion Models (Kim et al. 2023).

The student's ε_θ(x_t, c) is matched to the unconditional output of its own EMA teacher,
sg[ε_θ⁻(x_t, ∅)] (losses.sdd_loss), θ⁻ ← m θ⁻ + (1 − m) θ after every step (m = 0.999), on the
cross-attention parameters. The official pseudo-code (nannullna/safe-diffusion) draws x_t with the
EMA teacher, guidance s_g = 3, to a random step, for 1500 iterations (the `paper` preset).

Fast path: x_t comes from the teacher bank, the model's trajectories before training; the EMA
teacher starts as exactly that model and moves slowly (after 200 steps at m = 0.999, 82% of its
weight is still the starting point), so the bank stands in for sampling with it. The target is
computed with the EMA weights every step.

On a flow-matching model (SD3, FLUX) the student's velocity is matched to the teacher's velocity
for the empty prompt at the same x_t: the target is the model's own output, so the loss carries
over unchanged, as any target built linearly from outputs does (esd.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from ..errors import ErasekitError
from ..guidance import cfg
from ..losses import ema_update, sdd_loss
from ..sampling import denoiser_out
from .base import MethodConfig, TrajectoryBankMethod


@dataclass
class SddConfig(MethodConfig):
    steps: int = 200
    lr: float = 2e-4
    optimizer: str = "adam"
    ema_decay: float = 0.999  # m
    sample_guidance: float = 3.0  # s_g of the sampling that draws x_t
    ddim_steps: int = 50

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ErasekitError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


PAPER = {"steps": 1500, "ema_decay": 0.999, "sample_guidance": 3.0}


class WithWeights:
    """The denoiser module called with other weights (the EMA teacher's), wherever the module itself is called;
    `module` is the module, whose attention processors a family may set around the call (SD3's)."""

    def __init__(self, module: torch.nn.Module, weights: dict[str, torch.Tensor]):
        self.module, self.weights = module, weights

    def __call__(self, *args, **kwargs):
        return functional_call(self.module, self.weights, args, kwargs, strict=False)


class Sdd(TrajectoryBankMethod):
    name = "sdd"
    Config = SddConfig
    presets = {"paper": PAPER}

    @classmethod
    def check_replacement(cls, config, replacement):
        if replacement:
            raise ErasekitError("SDD maps a concept onto the unconditional output: it takes no replacement")

    def __init__(self, pipe, concepts, config: SddConfig, replacement=None):
        super().__init__(pipe, concepts, config)
        self.params: dict[str, torch.nn.Parameter] = {}
        self.ema: dict[str, torch.Tensor] = {}

    def bind(self, params):
        self.params = params
        self.ema = {name: p.detach().clone() for name, p in params.items()}

    def after_step(self):
        with torch.no_grad():
            for name, p in self.params.items():
                ema_update(self.ema[name], p, self.config.ema_decay)

    def extra_state(self):
        return {f"ema.{k}": v for k, v in self.ema.items()}

    def load_extra_state(self, state):
        self.ema = {k.removeprefix("ema."): v.to(self.device) for k, v in state.items()}

    def teacher_step(self, x, t, i, concept):
        n = x.shape[0]
        eps_uncond, eps_concept = denoiser_out(self.denoiser, x.repeat(2, 1, 1, 1), t, torch.cat([self.uncond_like(n), self.concept_emb[concept]])).chunk(2)
        return cfg(eps_uncond, eps_concept, self.config.sample_guidance), {}

    def loss(self, batch):
        x, t = batch["x"].to(self.device), batch["t"]
        eps_concept = denoiser_out(self.denoiser, x, t, self.concept_emb[batch["concept"]])
        with torch.no_grad():
            t_full = torch.as_tensor(t, device=x.device)
            eps_teacher = denoiser_out(WithWeights(self.denoiser, self.ema), x, t_full, self.uncond_like(x.shape[0]))
        loss = sdd_loss(eps_concept, eps_teacher)
        return loss, {"sdd": loss.item()}
