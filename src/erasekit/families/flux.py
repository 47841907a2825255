"""FLUX.1: a transformer of dual-stream (joint) and single-stream blocks denoising by flow matching.

Its conditioning is T5's hidden states alone, plus CLIP's pooled embedding. The transformer reads its
latents as 2 x 2 patches packed into a sequence, with 3-D position ids for text and image tokens,
and takes the timestep as σ (1000 σ / 1000). FLUX.1-dev is guidance-distilled: the guidance scale
is an input (`guidance_embeds`), and its pipeline samples with one call a step, no negative branch.

erasekit keeps latents as (batch, channels, height, width) everywhere and packs them only around the
denoiser call (`FluxConditioning.denoise`), so the bank, the losses and the samplers are the same as
SD3's. Where a method needs ε(∅) (ESD's target, AbO's, a guided trajectory), it calls the model on
the empty prompt and combines the branches by classifier-free guidance ("true CFG" in diffusers'
FLUX pipeline), at the embedded guidance TRAINING_GUIDANCE, as the ESD authors' FLUX script does.
"""

from __future__ import annotations

import numpy as np
import torch

from . import Family
from .sd3 import JOINT_PRESETS, JointConditioning

# The embedded guidance of every call erasekit makes to a guidance-distilled transformer: 1, the ESD
# authors' FLUX training default (esd_flux.py's --guidance_scale); generation uses the user's scale.
TRAINING_GUIDANCE = 1.0


class FluxConditioning(JointConditioning):
    """FLUX's: the latents packed into 2 x 2 patches for the call and unpacked after it; `added` holds
    the embedded guidance scale per prompt where the model is guidance-distilled."""

    def denoise(self, denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        guidance = self.added.get("guidance")
        out = denoiser(
            hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=t.to(x.dtype) / 1000,
            guidance=guidance.float() if guidance is not None else None,
            pooled_projections=self.added["pooled_projections"].to(x.dtype), encoder_hidden_states=self.hidden.to(x.dtype),
            txt_ids=torch.zeros(self.hidden.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
        ).sample
        return FluxPipeline._unpack_latents(out, h, w, 1)  # a scale factor of 1: h and w are already in latents


class Flux(Family):
    name, label = "flux", "FLUX"
    pipeline_class = "FluxPipeline"
    components = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    weighted = ("transformer", "vae", "text_encoder", "text_encoder_2")
    optional = ("image_encoder", "feature_extractor")  # IP-Adapter's, absent from FLUX.1's own folders
    token_file_keys = ("clip_l", "t5")
    denoiser = "transformer"
    sampler = "FlowMatchEulerDiscreteScheduler"
    guidance = 3.5  # FluxPipeline's default: FLUX.1-dev's distilled guidance, an input of the model, not CFG
    cross_attention = False
    lora_format = "peft"  # diffusers' transformer.* keys, which ComfyUI maps for FLUX too
    checkpoint_whole = False  # FLUX.1's own single files hold the transformer alone (ComfyUI's diffusion_models)
    checkpoint_marker = "double_blocks."
    # The dual-stream blocks' text stream and the context embedder: the layers EraseAnything and UCE's
    # FLUX script change (the single-stream blocks share their weights between text and image).
    presets = JOINT_PRESETS

    @classmethod
    def latent_shape(cls, denoiser_config, vae_config):
        # The transformer sees 2 x 2 patches of the VAE's latents; its config has no size, the VAE's has the image's.
        size = vae_config["sample_size"] // 2 ** (len(vae_config["block_out_channels"]) - 1)
        return (denoiser_config["in_channels"] // 4, size, size)

    @classmethod
    def set_timesteps(cls, scheduler, steps, latent_shape):
        """As FluxPipeline: σ from 1 to 1/steps, shifted by μ, which grows with the number of image patches."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = scheduler.config
        mu = calculate_shift(latent_shape[1] * latent_shape[2] // 4, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)

    @classmethod
    def negative_guidance(cls, guidance):
        # FluxPipeline reads a negative prompt only under "true CFG", a second call a step at true_cfg_scale > 1
        return {"true_cfg_scale": guidance}

    @classmethod
    def from_single_file(cls, path, config, dtype=None, **kwargs):
        """The transformer from the file, everything else from the `config` folder."""
        from diffusers import FluxTransformer2DModel

        transformer = FluxTransformer2DModel.from_single_file(path, config=config, subfolder="transformer", dtype=dtype, local_files_only=True)
        return cls.pipeline_type().from_pretrained(config, transformer=transformer, dtype=dtype, local_files_only=True, **kwargs)

    @classmethod
    def checkpoint_denoiser(cls, pipe):
        from ..single_file import FLUX_LAYOUT, transformer_tensors

        return transformer_tensors(pipe.transformer, FLUX_LAYOUT)

    @classmethod
    def encode(cls, pipe, prompts):
        hidden, pooled, _ = pipe.encode_prompt(prompts, None, device=pipe.device)
        added = {"pooled_projections": pooled}
        if pipe.transformer.config.guidance_embeds:  # guidance-distilled (FLUX.1-dev): the scale is an input
            added["guidance"] = torch.full((len(prompts),), TRAINING_GUIDANCE, device=hidden.device)
        return FluxConditioning(hidden, added)

    @classmethod
    def sequence_segments(cls, pipe):
        return [(pipe.tokenizer_2, None)]  # the sequence is T5's; CLIP gives only the pooled embedding
