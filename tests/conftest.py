"""Shared fixtures: the shipped model and classifier, and tiny SD 1.x / 2.x pipelines built from configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def builtin_pipe():
    from erasekit import load_pipeline

    return load_pipeline("builtin")


@pytest.fixture(scope="session")
def detector():
    from erasekit.shapes.classifier import load_classifier

    return load_classifier()


def build_tiny_sd(version: str):
    """A random-weight StableDiffusionPipeline shaped like SD 1.x ("1") or SD 2.x ("2"), in miniature."""
    import tempfile
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from erasekit.shapes.tokenizer import save_tokenizer

    torch.manual_seed(0)
    tokenizer = save_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    sd2 = version == "2"
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=(2, 4) if sd2 else 4, use_linear_projection=sd2, upcast_attention=sd2,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu" if sd2 else "quick_gelu",
    ))
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.fixture(scope="session", params=["1", "2"], ids=["sd1", "sd2"])
def tiny_sd_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-sd{request.param}")
    build_tiny_sd(request.param).save_pretrained(folder, safe_serialization=True)
    return folder
