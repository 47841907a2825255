"""Stable Diffusion XL: two text encoders, whose hidden states are concatenated (768 + 1280 = 2048 wide),
plus the second encoder's pooled embedding and the image-size `time_ids` as added conditioning."""

from __future__ import annotations

import torch

from . import Conditioning, Family


class StableDiffusionXL(Family):
    name, label = "sdxl", "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    weighted = ("unet", "vae", "text_encoder", "text_encoder_2")
    token_file_keys = ("clip_l", "clip_g")  # diffusers' SDXL textual-inversion files
    checkpoint_marker = "conditioner.embedders.1."  # the second text encoder, in the original layout

    @classmethod
    def encode(cls, pipe, prompts):
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        if pipe.config.force_zeros_for_empty_prompt:
            # SDXL's unconditional input is zeros, not the encoded empty prompt (the pipeline's own convention).
            empty = torch.tensor([p == "" for p in prompts], device=hidden.device)
            hidden = torch.where(empty[:, None, None], torch.zeros_like(hidden), hidden)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        size = pipe.default_sample_size * pipe.vae_scale_factor
        projection = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=hidden.dtype, text_encoder_projection_dim=projection)
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": time_ids.to(hidden.device).expand(len(prompts), -1)})

    @classmethod
    def checkpoint_text_encoders(cls, pipe):
        return [("conditioner.embedders.0.transformer.", "hf", pipe.text_encoder), ("conditioner.embedders.1.model.", "openclip", pipe.text_encoder_2)]
