"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, whose hidden states are all the UNet's conditioning."""

from __future__ import annotations

from . import Conditioning, Family


class StableDiffusion(Family):
    name, label = "sd", "SD 1.x/2.x"
    pipeline_class = "StableDiffusionPipeline"
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    weighted = ("unet", "vae", "text_encoder")

    @classmethod
    def pipeline_kwargs(cls):
        return dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    @classmethod
    def checkpoint_text_encoders(cls, pipe):
        # SD 2.x's encoder is OpenCLIP's (GELU); SD 1.x's is OpenAI's CLIP (quick GELU), kept in transformers' names
        if pipe.text_encoder.config.hidden_act == "gelu":
            return [("cond_stage_model.model.", "openclip", pipe.text_encoder)]
        return [("cond_stage_model.transformer.", "hf", pipe.text_encoder)]

    @classmethod
    def encode(cls, pipe, prompts):
        hidden, _ = pipe.encode_prompt(prompts, pipe.device, 1, do_classifier_free_guidance=False)
        return Conditioning(hidden)
