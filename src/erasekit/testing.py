"""Random-weight Stable Diffusion pipelines (SD 1.x/2.x, SDXL, SD3) built from configs alone: for tests and
benchmarks that need a model of a given shape (even SD 1.4's or SDXL's full UNet) without downloading one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def random_pipeline(unet_config: dict, *, sd2: bool = False, seed: int = 0):
    """A StableDiffusionPipeline around a random UNet of `unet_config`, with the shapes-world tokenizer, a
    one-layer CLIP text encoder as wide as the UNet's cross-attention, and a two-level VAE.
    sd2 selects SD 2.x conventions (v-prediction, GELU text encoder) instead of SD 1.x ones."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    unet, vae = _unet(unet_config), _vae()
    text_encoder = CLIPTextModel(_text_config(tokenizer, unet.config.cross_attention_dim, 1, "gelu" if sd2 else "quick_gelu"))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler("v_prediction" if sd2 else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# SDXL's UNet config scaled down: the same blocks, add-embedding and conditioning layout, narrower
# (text encoders 24 and 40 wide make the 64-wide cross-attention, as 768 + 1280 make SDXL's 2048) and shallower.
SDXL_SCALED_DOWN = dict(
    block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], transformer_layers_per_block=[1, 1, 2], layers_per_block=1,
    cross_attention_dim=64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, sample_size=8,
)


def random_sdxl_pipeline(unet_config: dict, *, seed: int = 0):
    """A StableDiffusionXLPipeline around a random UNet of `unet_config` (SDXL's, scaled down with
    SDXL_SCALED_DOWN), with two two-layer CLIP text encoders (the second with a projection, for the
    pooled embedding) splitting the cross-attention width 3:5 as SDXL's do, the shapes-world tokenizer for both, and
    a two-level VAE."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    unet, vae = _unet(unet_config), _vae()
    width = unet.config.cross_attention_dim
    first = _text_config(tokenizer, 3 * width // 8, 2, "quick_gelu")  # 768 and 1280 of SDXL's 2048, scaled
    second = _text_config(tokenizer, width - 3 * width // 8, 2, "gelu")
    second.projection_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(first), text_encoder_2=CLIPTextModelWithProjection(second),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler("epsilon"), force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# SD3-medium's transformer (24 joint blocks of 24 heads x 64, text 4096 wide, pooled 2048), scaled
# down: the same blocks and embeddings, narrower and two blocks deep, on the 4-channel tiny VAE.
SD3_SCALED_DOWN = dict(
    sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
    joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=16,
)


def random_sd3_pipeline(transformer_config: dict = SD3_SCALED_DOWN, *, seed: int = 0, t5: bool = False):
    """A StableDiffusion3Pipeline around a random SD3Transformer2DModel of `transformer_config`, with two
    two-layer CLIP text encoders with projections (24 and 40 wide: their pooled outputs make the
    64-wide pooled embedding, as 768 + 1280 make SD3's 2048), the shapes-world tokenizer for both, a
    two-layer T5 as wide as the text stream where `t5` (else none: diffusers then conditions on zeros
    in its place), a two-level VAE and flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    transformer = SD3Transformer2DModel(**transformer_config)
    encoders = []
    for width, act in ((3 * transformer.config.pooled_projection_dim // 8, "quick_gelu"), (5 * transformer.config.pooled_projection_dim // 8, "gelu")):
        config = _text_config(tokenizer, width, 2, act)
        config.projection_dim = width
        encoders.append(CLIPTextModelWithProjection(config))
    with torch.no_grad():  # SD3's CLIP-L projects its pooled output by the identity (what its single files leave out)
        encoders[0].text_projection.weight.copy_(torch.eye(encoders[0].config.projection_dim))
    t5_tokenizer = _t5_tokenizer() if t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=_vae(shift_factor=0.0609), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
        text_encoder_3=_t5(t5_tokenizer, transformer.config.joint_attention_dim) if t5 else None, tokenizer_3=t5_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# FLUX.1-dev's transformer (19 dual- and 38 single-stream blocks of 24 heads x 128, text 4096 wide, pooled
# 768, guidance embedded), scaled down to one block of each, on the 4-channel tiny VAE (16 packed).
FLUX_SCALED_DOWN = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
)


def random_flux_pipeline(transformer_config: dict = FLUX_SCALED_DOWN, *, seed: int = 0):
    """A FluxPipeline around a random FluxTransformer2DModel of `transformer_config`, with a two-layer CLIP
    text encoder (the pooled embedding) and a two-layer T5 encoder (the sequence) over the shapes world's
    words, a two-level VAE with FLUX's shift and scale, and FLUX.1-dev's shifted flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer, t5_tokenizer = _tokenizer(), _t5_tokenizer()
    transformer = FluxTransformer2DModel(**transformer_config)
    clip = CLIPTextModel(_text_config(tokenizer, transformer.config.pooled_projection_dim, 2, "quick_gelu"))
    t5 = _t5(t5_tokenizer, transformer.config.joint_attention_dim)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, vae=_vae(shift_factor=0.1159, scaling_factor=0.3611), scheduler=scheduler,
                        text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5(tokenizer, width: int):
    """A random two-layer T5 encoder `width` wide over `tokenizer`'s pieces, in eval mode (no dropout), as from_pretrained gives it."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=2, num_heads=4,
                                   feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)).eval()


def _t5_tokenizer():
    """A T5 tokenizer (SentencePiece unigram) whose pieces are the shapes world's words, as "▁word", and letters for the rest."""
    from transformers import T5Tokenizer

    words = sorted(t.removesuffix("</w>") for t in _tokenizer().get_vocab() if t.endswith("</w>") and t[:-4].isalpha())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)] + [("▁" + w, -1.0) for w in words]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _tokenizer():
    from .shapes.tokenizer import save_tokenizer

    return save_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")


def _unet(config: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def _text_config(tokenizer, width: int, layers: int, act: str):
    from transformers import CLIPTextConfig

    heads = max(1, width // 12)
    while width % heads:  # heads must divide the width (1024 = SD 2.1's: 64 heads, not 85)
        heads -= 1
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act=act,
    )


def _vae(**config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16, **config,
    )


def _scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
