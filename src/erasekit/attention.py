"""Cross-attention processors: Prompt-to-Prompt reweighting of chosen tokens (AbO's implicit δ), and a
probe that records the attention on chosen tokens (Forget-Me-Not's loss)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor


class TokenReweightProcessor(AttnProcessor):
    """Cross-attention whose probabilities on some tokens are multiplied by a weight (Hertz et al. 2022).

    `weights` has shape (B, n_tokens); 0 suppresses a token, 1 leaves it. Self-attention (no encoder
    states) is computed as usual.
    """

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, None, attention_mask, temb)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = self.adjust(attn.get_attention_scores(query, key, None), attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor

    def adjust(self, probs: torch.Tensor, heads: int) -> torch.Tensor:
        """probs: (B·heads, queries, tokens)."""
        return probs * self.weights.to(probs.dtype).repeat_interleave(heads, dim=0)[:, None, :]


class AttentionProbe(TokenReweightProcessor):
    """Cross-attention as usual, keeping (with gradients) the probabilities on the tokens where
    `mask` (B, n_tokens) is 1: Forget-Me-Not's loss reads them."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask)
        self.maps: list[torch.Tensor] = []

    def adjust(self, probs, heads):
        self.maps.append(super().adjust(probs, heads))
        return probs


def token_weights(tokenizer, prompts: list[str], words: list[str], weight: float) -> torch.Tensor:
    """(B, max_length) weights: `weight` at the token positions of `words` in each prompt, 1 elsewhere."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    targets = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    weights = torch.ones(len(prompts), tokenizer.model_max_length)
    for row, seq in enumerate(ids):
        for target in targets:
            for start in range(len(seq) - len(target) + 1):
                if seq[start : start + len(target)] == target:
                    weights[row, start : start + len(target)] = weight
    return weights


@contextmanager
def cross_attention_processor(unet, processor: AttnProcessor):
    """Within the block, every cross-attention layer of `unet` runs `processor`; yields it."""
    original = unet.attn_processors
    unet.set_attn_processor({name: processor if ".attn2." in name else p for name, p in original.items()})
    try:
        yield processor
    finally:
        unet.set_attn_processor(original)


def reweighted_cross_attention(unet, weights: torch.Tensor):
    """Within the block, every cross-attention layer of `unet` reweights tokens by `weights`."""
    return cross_attention_processor(unet, TokenReweightProcessor(weights))
