"""Random-weight Stable Diffusion pipelines built from configs alone: for tests and benchmarks that need
a model of a given shape (even SD 1.4's full UNet) without downloading one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def random_pipeline(unet_config: dict, *, sd2: bool = False, seed: int = 0):
    """A StableDiffusionPipeline around a random UNet of `unet_config`, with the shapes-world tokenizer, a
    one-layer CLIP text encoder as wide as the UNet's cross-attention, and a two-level VAE.
    sd2 selects SD 2.x conventions (v-prediction, GELU text encoder) instead of SD 1.x ones."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .shapes.tokenizer import save_tokenizer

    torch.manual_seed(seed)
    tokenizer = save_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    unet = UNet2DConditionModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})
    width = unet.config.cross_attention_dim
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
        num_attention_heads=width // 12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu" if sd2 else "quick_gelu",
    ))
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction" if sd2 else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
