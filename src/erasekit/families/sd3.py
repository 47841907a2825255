"""Stable Diffusion 3: a joint-attention transformer (MMDiT) denoising by flow matching.

Its conditioning is a sequence, the two CLIP encoders' hidden states (side by side, zero-padded to
the T5 width) followed by T5's (zeros where the pipeline has no T5), plus a pooled embedding of
both CLIPs. The transformer predicts the velocity ε − x0 at timestep 1000 σ, and the pipeline steps
with FlowMatchEulerDiscreteScheduler. A folder may leave T5 out, as diffusers allows.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ..attention import repeated_last_text_token
from . import Conditioning, Family


class JointConditioning(Conditioning):
    """SD3's: the transformer takes the text sequence and the pooled embedding by name."""

    def denoise(self, denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(hidden_states=x, timestep=t, encoder_hidden_states=self.hidden.to(x.dtype),
                        pooled_projections=self.added["pooled_projections"].to(x.dtype)).sample


class RowsAsOneConditioning(JointConditioning):
    """SD3 without T5: the pipeline's 256 equal zero rows in T5's place held as one row, which every joint
    attention weighs 256 times (attention.RepeatedLastTextToken). The transformer's output is the same
    (to float rounding; tests/test_sd3.py), at a fraction of the text tokens."""

    def denoise(self, denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with repeated_last_text_token(getattr(denoiser, "module", denoiser), t5_rows()):  # the module, also when called with other weights (SDD's teacher)
            return super().denoise(denoiser, x, t)


@functools.cache  # read once: denoise asks at every denoiser call
def t5_rows() -> int:
    """How many zero rows diffusers' SD3 pipeline conditions on in T5's place (encode_prompt's max_sequence_length)."""
    from diffusers import StableDiffusion3Pipeline

    return inspect.signature(StableDiffusion3Pipeline.encode_prompt).parameters["max_sequence_length"].default


# The text stream of the joint blocks, and what embeds the text and the pooled text and time.
_TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "norm_added", "to_add_out", "context", "time_text_embed", "norm_out", "proj_out")

# What the UNet's presets mean on a joint-attention transformer (SD3's, FLUX's). Text reaches the image
# only through joint attention, so "attn2" is its text stream's queries and keys in every joint block,
# the layers EraseAnything trains on FLUX; "attn2-kv", on the UNet the linear maps from the text
# embedding to what attention reads, is here the one such map, the context embedder, which UCE's FLUX
# script edits; "non-attn2" (ESD-u) everything but the text stream and the embeddings of text and time.
JOINT_PRESETS = {
    "attn2": lambda name: ".attn.add_q_proj." in name or ".attn.add_k_proj." in name,
    "attn2-kv": lambda name: name.startswith("context_embedder."),
    "non-attn2": lambda name: not any(part in name for part in _TEXT_STREAM),
}


class StableDiffusion3(Family):
    name, label = "sd3", "SD3"
    pipeline_class = "StableDiffusion3Pipeline"
    components = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    weighted = ("transformer", "vae", "text_encoder", "text_encoder_2")
    optional = ("text_encoder_3", "tokenizer_3")
    checkpoint_marker = "model.diffusion_model.joint_blocks."  # the MMDiT's blocks, in the original layout
    token_file_keys = ("clip_l", "clip_g", "t5")  # as SDXL's, and T5's where the folder has it
    denoiser = "transformer"
    sampler = "FlowMatchEulerDiscreteScheduler"
    cross_attention = False  # joint attention: text and image tokens attend together
    lora_format = "peft"  # diffusers' keys (transformer.*): diffusers and ComfyUI read them; ComfyUI alone reads kohya's lora_transformer_*
    presets = JOINT_PRESETS

    @classmethod
    def encode(cls, pipe, prompts):
        rows_as_one = pipe.text_encoder_3 is None
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=pipe.device, do_classifier_free_guidance=False,
                                                  **({"max_sequence_length": 1} if rows_as_one else {}))
        return (RowsAsOneConditioning if rows_as_one else JointConditioning)(hidden, {"pooled_projections": pooled})

    @classmethod
    def call(cls, pipe, **kwargs):
        if pipe.text_encoder_3 is not None:
            return pipe(**kwargs)
        with repeated_last_text_token(pipe.transformer, t5_rows()):  # T5's zero rows as one, as in encode
            return pipe(**kwargs, max_sequence_length=1)

    @classmethod
    def sequence_segments(cls, pipe):
        # CLIP's tokens (both encoders side by side), then T5's; with no T5 its part is zeros, which no edit reads
        if pipe.text_encoder_3 is None:
            return [(pipe.tokenizer, None)]
        return [(pipe.tokenizer, pipe.tokenizer.model_max_length), (pipe.tokenizer_3, None)]

    @classmethod
    def checkpoint_denoiser(cls, pipe):
        from ..single_file import SD3_LAYOUT, transformer_tensors

        return transformer_tensors(pipe.transformer, SD3_LAYOUT)

    @classmethod
    def checkpoint_text_encoders(cls, pipe):
        # both CLIPs in transformers' own layout, and T5 where the folder has it, as SD3's own single files hold them
        encoders = [("text_encoders.clip_l.transformer.", "hf", pipe.text_encoder), ("text_encoders.clip_g.transformer.", "hf", pipe.text_encoder_2)]
        return encoders + ([("text_encoders.t5xxl.transformer.", "t5", pipe.text_encoder_3)] if pipe.text_encoder_3 is not None else [])
