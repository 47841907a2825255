"""Cross-attention processors: Prompt-to-Prompt reweighting of chosen tokens (AbO's implicit δ), and a
probe that records the attention on chosen tokens (Forget-Me-Not's loss), on a UNet's cross-attention
or inside the joint attention of SD3's and FLUX's transformers."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
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


class JointAttentionProbe:
    """Joint attention (SD3, FLUX) left as it is, while the attention its image queries pay to the text
    tokens where `mask` (B, n_text) is 1 is recorded with gradients: those columns of its one softmax
    over image and text keys, recomputed from the layer's own projections. A forward hook (with kwargs)
    on every attention layer that has a text stream."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, args, kwargs, output):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        head_dim = getattr(attn, "head_dim", None) or attn.inner_dim // attn.heads

        def split(x, norm):  # (B, tokens, heads, head_dim), normed as the layer norms it
            x = x.unflatten(-1, (-1, head_dim))
            return norm(x) if norm is not None else x

        query, key = split(attn.to_q(hidden), attn.norm_q), split(attn.to_k(hidden), attn.norm_k)
        text_key, n = split(attn.add_k_proj(text), attn.norm_added_k), text.shape[1]
        rotary = kwargs.get("image_rotary_emb")
        if rotary is not None:  # FLUX: text first, and q and k rotated by position over [text, image]
            from diffusers.models.embeddings import apply_rotary_emb

            text_query = split(attn.add_q_proj(text), attn.norm_added_q)
            query = apply_rotary_emb(torch.cat([text_query, query], 1), rotary, sequence_dim=1)[:, n:]
            keys, columns = apply_rotary_emb(torch.cat([text_key, key], 1), rotary, sequence_dim=1), slice(0, n)
        else:  # SD3: image first
            keys, columns = torch.cat([key, text_key], 1), slice(key.shape[1], None)
        logits = torch.einsum("bqhd,bkhd->bhqk", query, keys) * head_dim**-0.5
        if isinstance(attn.processor, RepeatedLastTextToken):  # SD3 without T5: its last text row stands for 256 (image first, so the last key)
            logits[..., -1] += attn.processor.log_count
        probs = logits.softmax(-1)[..., columns]
        self.maps.append((probs * self.mask.to(probs.dtype)[:, None, None, :]).flatten(0, 1))  # (B·heads, image queries, text tokens)


class RepeatedLastTextToken:
    """SD3's joint attention (diffusers' JointAttnProcessor2_0) as if the last text token stood `count`
    times over. `count` identical tokens stay identical through every block and weigh `count` times one
    in each softmax, so adding log(count) to that key's logit computes the full sequence exactly, at the
    cost of one token. SD3 without T5 conditions on 256 equal zero rows (families/sd3.py): a 64-token
    image would otherwise be outnumbered five to one."""

    def __init__(self, count: int):
        self.log_count = math.log(count)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        def heads(x, norm):  # (B, heads, tokens, head_dim), normed as the layer norms it
            x = x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
            return norm(x) if norm is not None else x

        query = torch.cat([heads(attn.to_q(hidden_states), attn.norm_q), heads(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], 2)
        key = torch.cat([heads(attn.to_k(hidden_states), attn.norm_k), heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], 2)
        value = torch.cat([heads(attn.to_v(hidden_states), None), heads(attn.add_v_proj(encoder_hidden_states), None)], 2)
        bias = torch.zeros(key.shape[2], dtype=query.dtype, device=query.device)
        bias[-1] = self.log_count
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[None]).transpose(1, 2).flatten(2)
        image, text = out[:, : hidden_states.shape[1]], out[:, hidden_states.shape[1] :]
        return attn.to_out[1](attn.to_out[0](image)), (text if attn.context_pre_only else attn.to_add_out(text))


@contextmanager
def repeated_last_text_token(transformer, count: int):
    """Within the block, every joint-attention layer of `transformer` weighs its last text token `count` times."""
    original = transformer.attn_processors
    transformer.set_attn_processor(RepeatedLastTextToken(count))
    try:
        yield
    finally:
        transformer.set_attn_processor(original)


@contextmanager
def attention_probe(denoiser, mask: torch.Tensor):
    """Within the block, the attention of every layer where text meets the image is recorded on the
    tokens `mask` marks: a UNet's cross-attention (AttentionProbe), or the joint attention of a
    transformer's text-stream blocks (JointAttentionProbe). Yields the probe, whose `maps` fill."""
    joint = [m for m in denoiser.modules() if getattr(m, "add_k_proj", None) is not None]
    if not joint:
        with cross_attention_processor(denoiser, AttentionProbe(mask)) as probe:
            yield probe
        return
    probe = JointAttentionProbe(mask)
    handles = [m.register_forward_hook(probe, with_kwargs=True) for m in joint]
    try:
        yield probe
    finally:
        for handle in handles:
            handle.remove()


def token_weights(tokenizer, prompts: list[str], words: list[str], weight: float, length: int | None = None) -> torch.Tensor:
    """(B, length) weights: `weight` at the token positions of `words` in each prompt, 1 elsewhere;
    `length` the padded sequence's (default the tokenizer's maximum)."""
    length = length or tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True).input_ids
    targets = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    weights = torch.ones(len(prompts), length)
    for row, seq in enumerate(ids):
        for target in targets:
            for start in range(len(seq) - len(target) + 1):
                if seq[start : start + len(target)] == target:
                    weights[row, start : start + len(target)] = weight
    return weights


def concept_token_mask(pipe, prompts: list[str], words: list[str], length: int) -> torch.Tensor:
    """(B, length): 1 on the tokens of `words` in each prompt's conditioning sequence, 0 elsewhere, in
    every segment the family's sequence is made of (SD3: CLIP's tokens, then T5's)."""
    from .families import family_of

    parts, start = [], 0
    for tokenizer, size in family_of(pipe).sequence_segments(pipe):
        size = size or length - start
        parts.append(1 - token_weights(tokenizer, prompts, words, 0.0, size))
        start += size
    return torch.cat(parts, dim=1)


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
