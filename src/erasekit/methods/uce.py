"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024).

A closed-form edit of the cross-attention key and value projections, no training. For each
projection W, the edited W' minimises

    Σ_e s_e ||W' c_e − W c*_e||² + Σ_p s_p ||W' c_p − W c_p||² + λ ||W' − W||_F²

over the token embeddings c_e of the erased concepts (mapped to those of their destination c*_e,
the empty prompt unless a replacement is given) and c_p of the preserved ones; its solution is

    W' = (Σ_e s_e (W c*_e) c_eᵀ + Σ_p s_p (W c_p) c_pᵀ + λ W) (Σ_e s_e c_e c_eᵀ + Σ_p s_p c_p c_pᵀ + λ I)⁻¹.

Defaults follow the official code (train-scripts/train_erase.py): λ = 0.1, erase scale 1, preserve
scale max(0.1, 1 / number of preserved concepts); the tokens used are the concept's last word
token and all after it (EOS and padding), aligned with the destination's.

On SD3 and FLUX the keys and values of joint attention come from the text stream after a norm and
a timestep modulation, which are not linear in the text embedding, so UCE edits the last linear map
before them, the context embedder (W c: the text stream's input), as UCE's FLUX script does; the
closed form is the same with c the text encoders' output tokens, aligned within each tokenizer's
segment of the sequence (SD3: CLIP's, then T5's; FLUX: T5's).

RECE (Gong et al., ECCV 2024) hardens a UCE edit in rounds: each round finds, in closed form, the
token embeddings the edited model still maps to the concept's keys and values (`rece_embedding`),
and erases those too with UCE's closed form, taken from the weights as they stand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ErasekitError
from .base import ClosedFormMethod, MethodConfig, kept_concepts


def uce_solution(W: torch.Tensor, erase_inputs: torch.Tensor, erase_targets: torch.Tensor, preserve_inputs: torch.Tensor,
                 erase_scale: float, preserve_scale: float, lamb: float) -> torch.Tensor:
    """The closed form above. W: (out, in); erase_inputs/targets: (n, in) token embeddings c_e, c*_e;
    preserve_inputs: (m, in). Computed in float64: the (in x in) system is often ill-conditioned."""
    W64 = W.double()
    ce, cstar, cp = erase_inputs.double(), erase_targets.double(), preserve_inputs.double()
    lhs = erase_scale * (cstar @ W64.T).T @ ce + preserve_scale * (cp @ W64.T).T @ cp + lamb * W64
    gram = erase_scale * ce.T @ ce + preserve_scale * cp.T @ cp + lamb * torch.eye(W.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, lhs.T).T.to(W.dtype)  # lhs @ gram⁻¹, gram symmetric


def rece_embedding(edited: list[torch.Tensor], original: list[torch.Tensor], concept: torch.Tensor, reg: float) -> torch.Tensor:
    """RECE's adversarial embedding, regularised towards zero (the official code's default,
    close_form_emb_regzero): for each row c of `concept` (n, in), the e' that the edited projections
    W'_l map nearest to what the original W_l made of c,

        e' = argmin_e Σ_l ||W'_l e − W_l c||² + μ ||e||²  =  (Σ_l W'_lᵀ W'_l + μ I)⁻¹ (Σ_l W'_lᵀ W_l) c,

    over every edited matrix at once (keys and values of every layer); float64, as uce_solution."""
    gram = reg * torch.eye(concept.shape[1], dtype=torch.float64)
    cross = torch.zeros_like(gram)
    for new, old in zip(edited, original):
        gram += new.double().T @ new.double()
        cross += new.double().T @ old.double()
    return torch.linalg.solve(gram, cross @ concept.double().T).T.to(concept.dtype)


@dataclass
class UceConfig(MethodConfig):
    steps: int = 1  # one closed-form edit
    parameters: str = "attn2-kv"
    bank_trajectories: int = 0
    erase_scale: float = 1.0
    preserve_scale: float = 0.0  # 0: max(0.1, 1 / number of preserved concepts), as the official code
    lamb: float = 0.1
    preserve: str = ""  # comma-separated concepts to keep, e.g. "square,triangle"

    def validate(self) -> None:
        super().validate()
        if self.parameters != "attn2-kv":
            raise ErasekitError("uce edits the cross-attention keys and values only (parameters=attn2-kv)")
        if self.lamb <= 0:
            raise ErasekitError(f"lamb must be positive, got {self.lamb}")


class Uce(ClosedFormMethod):
    name = "uce"
    Config = UceConfig

    def _aligned_tokens(self, old: str, new: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `old` from its last word token on, and of `new` at the aligned positions, within
        each segment of the sequence (SD3: CLIP's tokens, then T5's; Family.sequence_segments)."""
        from ..families import family_of
        from ..sampling import embed

        emb = embed(self.pipe, [old, new]).hidden.float()  # the keys and values are linear in these states
        olds, news, start = [], [], 0
        for tokenizer, length in family_of(self.pipe).sequence_segments(self.pipe):
            end = emb.shape[1] if length is None else start + length
            # the last word's position: CLIP's ids are BOS, words..., EOS, and T5's words..., EOS (just EOS for "": 0)
            last = [max(len(tokenizer(t).input_ids) - 2, 0) for t in (old, new)]
            farthest = max(last)
            olds.append(emb[0, start + last[0] : end - (farthest - last[0])])
            news.append(emb[1, start + last[1] : end - (farthest - last[1])])
            start = end
        return torch.cat(olds), torch.cat(news)

    def __init__(self, pipe, concepts, config: UceConfig, replacement=None):
        super().__init__(pipe, concepts, config, replacement)
        # The token embeddings, while the text encoder is at hand (erase() moves it off an accelerator for the edit).
        pairs = [self._aligned_tokens(c, self.replacements[c] or "") for c in concepts]
        self.erase_inputs, self.erase_targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        self.kept = kept_concepts(config.preserve)
        self.preserve_inputs = (torch.cat([self._aligned_tokens(c, c)[0] for c in self.kept]) if self.kept
                                else self.erase_inputs.new_zeros((0, self.erase_inputs.shape[1])))

    def matrices(self, names: list[str]) -> dict[str, torch.nn.Parameter]:
        """The edited matrices among `names`: a bias (SD3's context embedder has one) stays, as UCE's closed form is for the matrix."""
        params = dict(self.denoiser.named_parameters())
        return {name: params[name] for name in names if params[name].dim() == 2}

    def erase_rows(self, matrices: dict[str, torch.nn.Parameter], inputs: torch.Tensor) -> dict[str, float]:
        """One UCE edit of every matrix, from the weights as they stand: `inputs` (one row per erase target) go to the targets."""
        cfg = self.config
        preserve_scale = cfg.preserve_scale or (max(0.1, 1 / len(self.kept)) if self.kept else 0.0)
        change = 0.0
        with torch.no_grad():
            for W in matrices.values():
                new = uce_solution(W.float().cpu(), inputs, self.erase_targets.cpu(), self.preserve_inputs.cpu(), cfg.erase_scale, preserve_scale, cfg.lamb)
                change += (new - W.float().cpu()).norm().item() ** 2
                W.copy_(new.to(W.dtype))
        return {"weight_change": change**0.5}

    def edit(self, names: list[str], progress: bool) -> list[dict[str, float]]:
        return [self.erase_rows(self.matrices(names), self.erase_inputs.cpu())]


@dataclass
class ReceConfig(UceConfig):
    rounds: int = 5  # RECE's epochs (scripts/nudity.sh)
    rece_reg: float = 1e-3  # μ of rece_embedding: RECE's regular_scale for objects

    def validate(self) -> None:
        super().validate()
        if self.rounds < 1:
            raise ErasekitError(f"rounds must be at least 1 (rounds=0 is plain uce), got {self.rounds}")
        if not self.rece_reg > 0:  # without it the solve fails where the edited matrices have less rank than the text width (FLUX's context embedder)
            raise ErasekitError(f"rece_reg must be positive, got {self.rece_reg}")


class Rece(Uce):
    """UCE's edit, then `rounds` rounds of RECE: find the embedding that brings the concept back, erase it."""

    name = "rece"
    Config = ReceConfig

    def edit(self, names: list[str], progress: bool) -> list[dict[str, float]]:
        from ..progress import counted

        matrices = self.matrices(names)
        original = [W.detach().float().cpu().clone() for W in matrices.values()]
        history = [self.erase_rows(matrices, self.erase_inputs.cpu())]
        with counted("rece rounds", self.config.rounds, not progress) as tick:
            for _ in range(self.config.rounds):
                found = rece_embedding([W.detach().float().cpu() for W in matrices.values()], original, self.erase_inputs.cpu(), self.config.rece_reg)
                history.append({**self.erase_rows(matrices, found), "found_to_concept": (found - self.erase_inputs.cpu()).norm().item()})
                tick(f"embedding found {history[-1]['found_to_concept']:.2f} from the concept's")
        return history
