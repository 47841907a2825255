"""Cross-attention processors: Prompt-to-Prompt reweighting of chosen tokens (AbO's implicit δ)."""

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
        probs = attn.get_attention_scores(query, key, None)
        weights = self.weights.to(probs.dtype).repeat_interleave(attn.heads, dim=0)[:, None, :]
        out = attn.batch_to_head_dim(torch.bmm(probs * weights, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


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
def reweighted_cross_attention(unet, weights: torch.Tensor):
    """Within the block, every cross-attention layer of `unet` reweights tokens by `weights`."""
    original = unet.attn_processors
    processor = TokenReweightProcessor(weights)
    unet.set_attn_processor({name: processor if ".attn2." in name else p for name, p in original.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(original)
