"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

The student's ε_θ(x_t, c) is trained towards the frozen model's negatively guided output
ε*(x_t, c_from) − η (ε*(x_t, c) − ε*(x_t, ∅)) (losses.esd_target), where x_t is drawn by DDIM
(50 steps, guidance 3 on c) to a random step. Variants differ in what trains:
esd-x (cross-attention), esd-u (all but cross-attention), esd-all, esd-x-strict (cross-attention k, v).

x_t is drawn from the frozen model (default; fast path: a teacher bank) or, as the paper's code
does, from the model being trained (`sample_from="student"`), which samples every step and holds
a frozen copy for the targets.

Adversarial training (`adversary_weight` > 0; adversary.py, as AdvUnlearn does with ESD's loss): each
step an attacker first moves c's prompt embedding (or, `adversary="token"`, a learned token read
through the text encoders) to where the student still gives ε*(x_t, c), then
the loss is also taken there, with the same target. It runs on the teacher bank only.

On a flow-matching model (SD3, FLUX) the output is a velocity v = ε − x0, not ε. The target carries over
unchanged: at a fixed x_t, x0 = x_t − σ v is affine in v, so guidance combines velocities as it
combines noise predictions, and v*(∅) − η (v*(c) − v*(∅)) is the velocity of the negatively guided
score, as the ε target is for DDPM. x_t is then drawn by flow-matching Euler (sampling.run_sampler).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import ErasekitError
from ..guidance import cfg
from ..losses import esd_loss, esd_target
from ..presets import trains_text
from ..sampling import initial_noise, run_sampler, denoiser_out
from .base import BankConfig, TrajectoryBankMethod


@dataclass
class EsdConfig(BankConfig):
    # Tuned on the built-in model, where the paper's η = 1 did not erase even in 1,000 steps
    # (benchmarks/results/shape-erasure-square/results.md); the variants below set their own. The paper's
    # settings are the `paper` preset.
    steps: int = 400
    lr: float = 2e-4
    optimizer: str = "adam"
    batch_size: int = 4
    eta: float = 3.0  # negative guidance
    ddim_steps: int = 50
    start_guidance: float = 3.0  # guidance of the DDIM sampling that draws x_t
    sample_from: str = "frozen"  # "frozen" (teacher bank) or "student" (the paper's original)
    from_prompt: str = ""  # c_from; "" is the unconditional ∅

    def validate(self) -> None:
        super().validate()
        if self.sample_from not in ("frozen", "student"):
            raise ErasekitError(f"sample_from must be 'frozen' or 'student', got '{self.sample_from}'")
        if self.adversary_weight > 0 and self.sample_from != "frozen":
            raise ErasekitError("adversarial training (adversary_weight > 0) runs on the teacher bank: use sample_from='frozen'")
        if self.check_every > 0 and self.sample_from != "frozen":
            raise ErasekitError("early stopping (check_every > 0) holds out trajectories of the teacher bank: use sample_from='frozen'")
        if trains_text(self.parameters) and self.sample_from != "frozen":  # the frozen copy's targets would read the trained text encoders
            raise ErasekitError(f"parameter preset '{self.parameters}' trains the text encoders on the teacher bank: use sample_from='frozen'")


PAPER = {"optimizer": "adam", "lr": 1e-5, "steps": 1000, "batch_size": 1, "eta": 1.0, "ddim_steps": 50, "start_guidance": 3.0, "sample_from": "student"}


class Esd(TrajectoryBankMethod):
    Config = EsdConfig
    presets = {"paper": PAPER}
    trains_text_encoder = True

    @classmethod
    def check_replacement(cls, config, replacement):
        if replacement:
            raise ErasekitError("ESD takes no replacement concept; use from_prompt to erase towards a concept, or method 'abo'")

    def __init__(self, pipe, concepts, config: EsdConfig, replacement=None):
        super().__init__(pipe, concepts, config)
        self.from_emb = self.encoded([config.from_prompt]) if config.from_prompt else None
        self.frozen = None

    def teacher_outputs(self, unet, x, t, concept):
        """ε*(∅), ε*(c) and ε*(c_from) at x_t in one batched call of the frozen `unet`."""
        n = x.shape[0]
        embs = [self.uncond_like(n), self.concept_emb[concept]] + ([self.from_emb.expand(n, -1, -1)] if self.from_emb is not None else [])
        outs = denoiser_out(unet, x.repeat(len(embs), 1, 1, 1), t, torch.cat(embs)).chunk(len(embs))
        eps_uncond, eps_concept = outs[0], outs[1]
        eps_from = outs[2] if self.from_emb is not None else eps_uncond
        return eps_uncond, eps_concept, eps_from

    def teacher_step(self, x, t, i, concept):
        eps_uncond, eps_concept, eps_from = self.teacher_outputs(self.denoiser, x, t, concept)
        target = esd_target(eps_from, eps_concept, eps_uncond, self.config.eta)
        kept = {"target": target} | ({"eps_concept": eps_concept} if self.adversary is not None else {})
        return cfg(eps_uncond, eps_concept, self.config.start_guidance), kept

    def prepare(self, generator, progress):
        if self.config.sample_from == "frozen":
            super().prepare(generator, progress)
        else:
            self.frozen = copy.deepcopy(self.denoiser).requires_grad_(False).to(self.dtype)  # the masters' copy, back in the compute dtype

    @torch.no_grad()
    def _sample_from_student(self, generator):
        """The paper's loop: DDIM with the current student to a random step, targets from the frozen copy."""
        xs, ts, concepts, targets = [], [], [], []
        for _ in range(self.config.batch_size):
            stop = int(torch.randint(0, self.config.ddim_steps, (1,), generator=generator))
            concept = torch.randint(0, len(self.concepts), (1,), generator=generator)
            x = initial_noise(1, self.latent_shape, generator, self.scheduler).to(self.device)

            def guided(x, t, i):
                eps_uncond, eps_concept = denoiser_out(self.denoiser, x.repeat(2, 1, 1, 1), t, torch.cat([self.uncond_like(1), self.concept_emb[concept]])).chunk(2)
                return cfg(eps_uncond, eps_concept, self.config.start_guidance)

            x = run_sampler(self.scheduler, x, guided, stop=stop)
            t = self.scheduler.timesteps[stop]
            eps_uncond, eps_concept, eps_from = self.teacher_outputs(self.frozen, x, t, concept)
            xs.append(x)
            ts.append(t.view(1))
            concepts.append(concept)
            targets.append(esd_target(eps_from, eps_concept, eps_uncond, self.config.eta))
        return {"x": torch.cat(xs), "t": torch.cat(ts), "concept": torch.cat(concepts), "target": torch.cat(targets)}

    def draw(self, generator):
        if self.bank is not None:
            return super().draw(generator)
        return self._sample_from_student(generator)

    def erasure_loss(self, batch):
        x = batch["x"].to(self.device)
        return esd_loss(denoiser_out(self.denoiser, x, batch["t"], self.concept_emb[batch["concept"]]), batch["target"].to(self.device))

    def loss(self, batch):
        x = batch["x"].to(self.device)
        conditions = [self.concept_emb[batch["concept"]]] + ([batch["attacked"]] if "attacked" in batch else [])
        eps, *attacked = denoiser_out(self.denoiser, x.repeat(len(conditions), 1, 1, 1), batch["t"].repeat(len(conditions)), torch.cat(conditions)).chunk(len(conditions))
        target = batch["target"].to(self.device)
        loss = esd_loss(eps, target)
        if not attacked:
            return loss, {"esd": loss.item()}
        at_attack = esd_loss(attacked[0], target)  # the same target at the embedding the attacker found (adversary.py)
        return loss + self.config.adversary_weight * at_attack, {"esd": loss.item(), "attacked": at_attack.item()}


# The variants differ in what trains and in defaults measured on the built-in model. On 132 images
# of square (benchmarks/results/tuning-esd-*/results.md):
# esd-x needs η 5 to erase; esd-u needs its slower, longer schedule over a larger bank.


@dataclass
class EsdXConfig(EsdConfig):
    eta: float = 5.0


class EsdX(Esd):
    """ESD-x: trains the cross-attention (the paper's choice for styles)."""

    name = "esd-x"
    Config = EsdXConfig


@dataclass
class EsdUConfig(EsdConfig):
    parameters: str = "non-attn2"
    eta: float = 6.0
    lr: float = 5e-5
    steps: int = 800
    bank_trajectories: int | None = 64


class EsdU(Esd):
    """ESD-u: trains all but the cross-attention (the paper's choice for objects and nudity)."""

    name = "esd-u"
    Config = EsdUConfig


@dataclass
class EsdAllConfig(EsdConfig):
    parameters: str = "all"


class EsdAll(Esd):
    """ESD training every UNet parameter."""

    name = "esd-all"
    Config = EsdAllConfig


@dataclass
class EsdXStrictConfig(EsdConfig):
    parameters: str = "attn2-kv"


class EsdXStrict(Esd):
    """ESD training only the cross-attention keys and values."""

    name = "esd-x-strict"
    Config = EsdXStrictConfig
