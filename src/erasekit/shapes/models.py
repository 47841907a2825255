"""Architectures of the shapes-world pipelines: standard diffusers/transformers classes, small configs.

64x64 RGB images, a VAE with 4x downsampling (16x16x4 latents), a UNet with cross-attention only
at the 8x8 and 4x4 levels (self-attention at the top level dominates CPU cost and buys little
here), and a small CLIP text encoder trained jointly with the UNet.

The second world's denoiser is an SD3 transformer (MMDiT) on the same latents, trained by flow
matching on the first world's frozen VAE and text encoder.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_WIDTH = 96
# The DiT's CLIP sequence: every caption of the world fits (at most 21 tokens), and each text token
# costs as much as an image token in every joint block, where SD's 77 would double the training time.
DIT_TEXT_LENGTH = 32


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
    )


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(48, 96, 128),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
    )


def make_scheduler() -> DDIMScheduler:
    # A linear schedule ends near zero SNR (alpha_bar_T ~ 4e-5). SD's scaled-linear schedule leaks
    # enough of a 16x16 latent's mean at t = T that the model would read colour from the noise.
    # Near zero SNR, epsilon-prediction is ill-conditioned (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    # multiplies eps errors by up to 160): a first run drew blobs after 1200 steps. v-prediction
    # (as in SD 2.x) is well conditioned at every t.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )


def make_transformer() -> SD3Transformer2DModel:
    """SD3's MMDiT, six joint blocks of 4 heads x 32 on 2x2 latent patches (64 image tokens)."""
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=6,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=2 * TEXT_WIDTH,  # the pipeline puts its two CLIPs' hidden states side by side
        caption_projection_dim=128,
        pooled_projection_dim=2 * TEXT_WIDTH,
        pos_embed_max_size=16,  # up to 128 px
    )
    # adaLN-Zero (DiT, Peebles & Xie 2023): every block starts as the identity and the output at zero,
    # which trains faster than diffusers' default initialisation.
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name.endswith(("norm1.linear", "norm1_context.linear")) or name in ("norm_out.linear", "proj_out"):
                module.weight.zero_()
                module.bias.zero_()
    return transformer


def with_projection(text_encoder: CLIPTextModel) -> CLIPTextModelWithProjection:
    """The same CLIP encoder as SD3's pipeline takes it: with a (here identity) projection of its pooled output."""
    config = text_encoder.config
    config.projection_dim = config.hidden_size
    encoder = CLIPTextModelWithProjection(config).to(text_encoder.dtype)
    encoder.text_model.load_state_dict(text_encoder.state_dict())  # transformers 5: CLIPTextModel is the text model itself
    with torch.no_grad():
        encoder.text_projection.weight.copy_(torch.eye(config.hidden_size))
    return encoder


def make_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # No shift: SD3 shifts its schedule towards noise for 128x128 latents; 16x16 ones need none.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
