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

    def edit(self, names: list[str], progress: bool) -> list[dict[str, float]]:
        cfg = self.config
        ce, cstar, cp = self.erase_inputs.cpu(), self.erase_targets.cpu(), self.preserve_inputs.cpu()
        preserve_scale = cfg.preserve_scale or (max(0.1, 1 / len(self.kept)) if self.kept else 0.0)
        params = dict(self.denoiser.named_parameters())
        change = 0.0
        with torch.no_grad():
            for name in names:
                W = params[name]
                if W.dim() != 2:  # a bias (SD3's context embedder has one): UCE's closed form is for the matrix; the bias stays
                    continue
                new = uce_solution(W.float().cpu(), ce, cstar, cp, cfg.erase_scale, preserve_scale, cfg.lamb)
                change += (new - W.float().cpu()).norm().item() ** 2
                W.copy_(new.to(W.dtype))
        return [{"weight_change": change**0.5}]
