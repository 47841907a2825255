"""All but One: surgical concept erasing with model preservation (Hong, Lee, Woo, AAAI 2024).

Algorithm 1 of the paper. For a target concept c drawn from C each step:
  x_t by DDIM (η = 0, T steps) from x_T ~ N(0, I) with the frozen model's guided output
      ε*(x_τ, ∅) + γ1 (ε*(x_τ, c) − ε*(x_τ, ∅)) + δ(C_I, x_τ, θ*)          (lines 4–10)
  L_concept = ‖γ2 (ε_θ(x_t, c) − sg[ε_θ(x_t, ∅)]) − (γ1 (ε*(x_t, c) − ε*(x_t, ∅)) + δ)‖²   (line 11)
  L_penalty = ‖ε_θ(x_t, ∅) − ε*(x_t, ∅)‖²                                    (line 12)
  L = L_concept + λ L_penalty                                                  (line 13)
δ is the erasing signal: explicit (SEGA-style masked guidance of instruction concepts C_I:
"−target" and, with a replacement c', "+c'") or implicit (the frozen model with the target tokens'
cross-attention suppressed, Prompt-to-Prompt style: δ = γ1 (ε^ptp(x_t, c) − ε*(x_t, c))).

Where x_t comes from. Algorithm 1 steps x_τ with the erased guidance (lines 6–7), so the student
learns at images from which the concept is already gone; on the built-in model that cost other
concepts more than following the concept's own guided trajectory (line 6 alone, as ESD draws its
x_t), which erased as well. A replacement, though, is learnt only where x_t shows it, i.e. along
the erased trajectory (benchmarks/results/shape-erasure-square/results.md). So `trajectory="auto"` (the
default) follows the concept's trajectory without a replacement and Algorithm 1's with one; the
`paper` preset and `trajectory="erased"` always follow Algorithm 1.

On a flow-matching model (SD3, FLUX) ε is the velocity ε − x0: the targets are linear in the model's
outputs, so they carry over as ESD's do (esd.py), δ included (a sum of guidance terms).

Concepts to keep (`preserve`, as UCE's): each gets the concept loss with a zero δ,
  L_keep = ‖γ2 (ε_θ(x_t, p) − sg[ε_θ(x_t, ∅)]) − γ1 (ε*(x_t, p) − ε*(x_t, ∅))‖²,
so the student keeps the frozen model's guidance towards p at the same x_t where it unlearns c's:
the anchors of the mass-erasure methods (MACE, ANT), in AbO's own terms. Not in the paper. Each
draw erases one of n concepts and keeps one kept concept, so each concept's L_concept carries 1/n
of the loss; L_keep is weighed `preserve_weight`/n, so that it pulls against each concept as hard
as it does against one erased alone (benchmarks/results/many-concepts-keep-divided/results.md).
Where: `preserve_at="target"` takes L_keep at the erased concept's x_t (above); `"own"` takes it at
x_t of p's own γ1-guided trajectory, from a second bank, as UCE and MACE keep a concept where the
model draws it, so that a kept neighbour does not pull against the erasure at c's own images.

Adversarial training (`adversary_weight` > 0; adversary.py, not in the paper): each step an attacker
first moves c's prompt embedding (or, `adversary="token"`, a learned token read through the text
encoders) to where the student still gives ε*(x_t, c), then L_concept is
also taken there, with the same target, weighed `adversary_weight`.

Fast path: every x_τ of a trajectory and both targets at it are computed once, in batches, into the
teacher bank (the frozen outputs at x_t are the very ones that drew it); each step then runs only
the student, [c, ∅] stacked in one forward. The bank holds one trajectory per 25 draws
(`MethodConfig.bank_size`), the fewest that stayed inside Algorithm 1's own seed spread
(benchmarks/results/abo-fast-vs-reference/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import reweighted_cross_attention, token_weights
from ..errors import ErasekitError
from ..guidance import Instruction, cfg, explicit_delta
from ..losses import abo_concept_loss, abo_guidance_target, abo_loss
from ..sampling import denoiser_out
from ..bank import build_bank
from .base import BankConfig, TrajectoryBankMethod, kept_concepts, needs_cross_attention, one_each


@dataclass
class AboConfig(BankConfig):
    # Tuned on the built-in model (benchmarks/results/shape-erasure-square/results.md, docs/tuning-log.md).
    # Steps x batch: fewer draws erased nothing. No warm-up: a colour is settled in the first
    # sampling steps, and with the paper's warm-up AbO left every red. λ 100: the penalty pins
    # ε(x_t, ∅), and with it the parts of cross-attention every prompt shares; the paper's 5 cost
    # other shapes more at the same erasure. The paper's settings are the `paper` preset.
    steps: int = 150
    lr: float = 3e-4
    optimizer: str = "adamw"
    batch_size: int = 4
    gamma1: float = 7.5
    gamma2: float = 7.5
    lam: float = 100.0  # λ, weight of the penalty on the unconditional output
    ddim_steps: int = 35  # T
    delta: str = "explicit"  # "explicit", "implicit" or "none"
    erase_scale: float = 15.0  # g of the instruction "−target"; 2 γ1 reverses the kept guidance elements
    replace_scale: float = 7.5  # g of the instruction "+replacement"
    kappa: float = 0.5  # percentile below which a δ element is dropped
    warmup: int = 0  # t_warmup, in sampling steps
    window_start: int = 0  # B_c, in sampling-step indices (0 = noisiest)
    window_end: int | None = None
    ptp_weight: float = 0.0  # implicit δ: attention weight of the target tokens (0 = suppressed)
    # Which guidance steps x_τ towards x_t: "erased" (γ1 guidance + δ, lines 6–7 of Algorithm 1),
    # "concept" (γ1 guidance alone, line 6: x_t shows the concept, as ESD draws its x_t), or "auto":
    # "erased" with a replacement, "concept" without (why: the module docstring).
    trajectory: str = "auto"
    bank_trajectories: int | None = None  # one per 25 draws: 24 for the defaults, 8 for the paper's 200 x 1
    preserve: str = ""  # comma-separated concepts to keep (the module docstring's L_keep), e.g. "square,triangle"
    preserve_weight: float = 1.0  # the weight of L_keep against one concept's L_concept (divided by the concepts erased)
    preserve_at: str = "target"  # where L_keep is taken: at the erased concept's x_t ("target") or along each kept concept's own trajectory ("own")

    def validate(self) -> None:
        super().validate()
        if self.delta not in ("explicit", "implicit", "none"):
            raise ErasekitError(f"delta must be 'explicit', 'implicit' or 'none', got '{self.delta}'")
        if self.trajectory not in ("auto", "erased", "concept"):
            raise ErasekitError(f"trajectory must be 'auto', 'erased' or 'concept', got '{self.trajectory}'")
        if not 0.0 <= self.kappa < 1.0:
            raise ErasekitError(f"kappa must be in [0, 1), got {self.kappa}")
        if self.lam < 0:
            raise ErasekitError(f"lambda must be >= 0, got {self.lam}")
        if self.preserve_weight < 0:
            raise ErasekitError(f"preserve_weight must be >= 0, got {self.preserve_weight}")
        if self.preserve_at not in ("target", "own"):
            raise ErasekitError(f"preserve_at must be 'target' or 'own', got '{self.preserve_at}'")


def trajectory_for(config: AboConfig, replaced: bool) -> str:
    """The trajectory x_t follows, "auto" resolved: a replacement is learnt only where x_t shows it."""
    if config.trajectory != "auto":
        return config.trajectory
    return "erased" if replaced else "concept"


PAPER = {"trajectory": "erased", "optimizer": "adamw", "lr": 1e-5, "adam_eps": 1e-8, "gamma1": 7.5, "gamma2": 7.5, "lam": 5.0, "warmup": 5, "ddim_steps": 35, "steps": 200, "batch_size": 1}


class Abo(TrajectoryBankMethod):
    name = "abo"
    Config = AboConfig
    presets = {"paper": PAPER}
    trains_text_encoder = True

    @classmethod
    def check_family(cls, config, family):
        if config.delta == "implicit":
            needs_cross_attention(family, "abo's implicit δ (suppressed cross-attention)")

    @classmethod
    def check_replacement(cls, config, replacement):
        if config.delta == "implicit" and replacement:
            raise ErasekitError("a replacement concept needs the explicit δ (delta='explicit')")

    def __init__(self, pipe, concepts, config: AboConfig, replacement=None):
        super().__init__(pipe, concepts, config, replacement)
        replaced = any(self.replacements.values())
        self.trajectory = trajectory_for(config, replaced)
        window = dict(kappa=config.kappa, warmup=config.warmup, start=config.window_start, end=config.window_end)
        # C_I of the paper: "−c" (the step's target concept) and, with a replacement, "+c'" (each concept's own).
        self.instructions = [Instruction("-target", -config.erase_scale, **window)]
        # A concept without a replacement takes "": its Δ = ε(∅) − ε(∅) is zero, so "+c'" leaves it alone.
        self.replacement_emb = self.encoded([self.replacements[c] or "" for c in concepts]) if replaced else None
        if replaced:
            self.instructions.append(Instruction("+replacement", config.replace_scale, **window))
        self.ptp_weights = token_weights(pipe.tokenizer, concepts, concepts, config.ptp_weight)
        kept = kept_concepts(config.preserve)
        both = sorted(set(kept) & set(concepts))
        if both:
            raise ErasekitError(f"'{both[0]}' is both erased and preserved: name it in one of them")
        self.preserve_emb = self.encoded(kept) if kept else None

    def delta(self, x, t, i, concept, eps_uncond, eps_concept):
        cfg = self.config
        if cfg.delta == "none":
            return torch.zeros_like(eps_uncond)
        if cfg.delta == "implicit":
            with reweighted_cross_attention(self.denoiser, self.ptp_weights[concept]):
                eps_ptp = denoiser_out(self.denoiser, x, t, self.concept_emb[concept])
            return cfg.gamma1 * (eps_ptp - eps_concept)
        eps_instructions = [eps_concept]  # "−target" is the step's own concept: its output is at hand
        if self.replacement_emb is not None:
            eps_instructions.append(denoiser_out(self.denoiser, x, t, self.replacement_emb[concept]))
        return explicit_delta(eps_uncond, eps_instructions, self.instructions, i)

    def teacher_step(self, x, t, i, concept):
        n = x.shape[0]
        eps_uncond, eps_concept = denoiser_out(self.denoiser, x.repeat(2, 1, 1, 1), t, torch.cat([self.uncond_like(n), self.concept_emb[concept]])).chunk(2)
        delta = self.delta(x, t, i, concept, eps_uncond, eps_concept)
        target = abo_guidance_target(eps_concept, eps_uncond, delta, self.config.gamma1)
        guided = eps_uncond + target if self.trajectory == "erased" else cfg(eps_uncond, eps_concept, self.config.gamma1)
        targets = {"eps_uncond": eps_uncond, "target": target} | ({"eps_concept": eps_concept} if self.adversary is not None else {})
        if self.keeps_at("target"):  # every kept concept's guidance at this x_τ: (n, kept, C, H, W)
            k = len(self.preserve_emb)
            eps_kept = denoiser_out(self.denoiser, x.repeat(k, 1, 1, 1), t, self.preserve_emb[torch.arange(k).repeat_interleave(n)])
            targets["keep"] = abo_guidance_target(eps_kept.unflatten(0, (k, n)).transpose(0, 1), eps_uncond[:, None], 0.0, self.config.gamma1)
        return guided, targets

    def keeps_at(self, where: str) -> bool:
        """Whether concepts are kept, and L_keep taken `where` ("target" or "own", `preserve_at`)."""
        return self.preserve_emb is not None and self.config.preserve_at == where

    def kept_teacher_step(self, x, t, i, kept):
        """At x_τ of kept concepts' own trajectories: γ1 guidance to step with, and L_keep's target (δ = 0)."""
        n = x.shape[0]
        eps_uncond, eps_kept = denoiser_out(self.denoiser, x.repeat(2, 1, 1, 1), t, torch.cat([self.uncond_like(n), self.preserve_emb[kept]])).chunk(2)
        return cfg(eps_uncond, eps_kept, self.config.gamma1), {"target": abo_guidance_target(eps_kept, eps_uncond, 0.0, self.config.gamma1)}

    def prepare(self, generator, progress):
        super().prepare(generator, progress)
        if self.keeps_at("own"):  # as many trajectories as the erased concepts', at least one per kept concept
            k = len(self.preserve_emb)
            self.kept_bank = build_bank(self.scheduler, self.kept_teacher_step, one_each(self.config.bank_size(len(self.concepts)), k, "kept trajectories"),
                                        k, self.latent_shape, generator, self.device, progress=progress, label="kept concepts' bank")

    def draw(self, generator):
        batch = super().draw(generator)
        n = len(batch["x"])
        if self.keeps_at("target"):  # one kept concept per drawn x_t
            batch["kept"] = torch.randint(0, len(self.preserve_emb), (n,), generator=generator)
        elif self.keeps_at("own"):  # as many entries of the kept concepts' own trajectories
            kept = self.kept_bank.draw(n, generator)
            batch |= {"kept": kept["concept"], "kept_x": kept["x"], "kept_t": kept["t"], "kept_target": kept["target"]}
        return batch

    def erasure_loss(self, batch):
        x = batch["x"].to(self.device)
        conditions = torch.cat([self.concept_emb[batch["concept"]], self.uncond_like(x.shape[0])])
        eps_concept, eps_uncond = denoiser_out(self.denoiser, x.repeat(2, 1, 1, 1), batch["t"].repeat(2), conditions).chunk(2)
        return abo_concept_loss(eps_concept, eps_uncond, batch["target"].to(self.device), self.config.gamma2)

    def loss(self, batch):
        x, t = batch["x"].to(self.device), batch["t"]
        n = x.shape[0]
        # One student forward for every (x_t, t, condition) the loss needs, stacked.
        inputs = [(x, t, self.concept_emb[batch["concept"]]), (x, t, self.uncond_like(n))]
        if self.keeps_at("target"):
            inputs.append((x, t, self.preserve_emb[batch["kept"]]))
        elif self.keeps_at("own"):  # p and ∅ at p's own x_t
            kept_x = batch["kept_x"].to(self.device)
            inputs += [(kept_x, batch["kept_t"], self.preserve_emb[batch["kept"]]), (kept_x, batch["kept_t"], self.uncond_like(n))]
        if "attacked" in batch:
            inputs.append((x, t, batch["attacked"]))
        xs, ts, conditions = zip(*inputs)
        out = denoiser_out(self.denoiser, torch.cat(xs), torch.cat(ts), torch.cat(conditions))
        eps_concept, eps_uncond, *rest = out.chunk(len(inputs))
        target = batch["target"].to(self.device)
        loss, terms = abo_loss(eps_concept, eps_uncond, target, batch["eps_uncond"].to(self.device), self.config.gamma2, self.config.lam)
        if self.preserve_emb is not None:
            if self.keeps_at("target"):
                keep = abo_concept_loss(rest.pop(0), eps_uncond, batch["keep"][torch.arange(n), batch["kept"]].to(self.device), self.config.gamma2)
            else:
                keep = abo_concept_loss(rest.pop(0), rest.pop(0), batch["kept_target"].to(self.device), self.config.gamma2)
            loss, terms = loss + self.config.preserve_weight / len(self.concepts) * keep, terms | {"keep": keep.item()}
        if "attacked" in batch:  # the same target at the embedding the attacker found (adversary.py)
            attacked = abo_concept_loss(rest.pop(0), eps_uncond, target, self.config.gamma2)
            loss, terms = loss + self.config.adversary_weight * attacked, terms | {"attacked": attacked.item()}
        return loss, terms
