"""A whole pipeline as one single-file checkpoint in the original Stable Diffusion layout (A1111, ComfyUI).

diffusers converts that layout to its own (`from_single_file`) but not back, so this module writes
the reverse of its conversion: the fixed names come from diffusers' own table
(`DIFFUSERS_TO_LDM_MAPPING`), the block names are derived from the model's structure (so SD 1.x,
SD 2.x, SDXL and the tiny test models all convert), and the family says where its text encoders go
(families/). The round trip through `from_single_file` is the test: every weight comes back equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .families import denoiser_of, family_of
from .io import atomic_path

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(name: str, prefixes: list[tuple[str, str]], inner: dict[str, str]) -> str | None:
    """The original name of a diffusers parameter, from block prefixes and the renames inside a block."""
    for new, old in prefixes:
        if name.startswith(new):
            rest = name[len(new):]
            for a, b in inner.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            return old + rest
    return None


def unet_names(unet) -> dict[str, str]:
    """diffusers UNet parameter name -> its name in the original layout."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"] | DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    n = unet.config.layers_per_block
    blocks = []  # (diffusers prefix, original prefix)
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            blocks.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(n + 1) * i + j + 1}.0."))
            if getattr(block, "attentions", None):
                blocks.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(n + 1) * i + j + 1}.1."))
        if block.downsamplers:
            blocks.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(n + 1) * (i + 1)}.0.op."))
    for i, block in enumerate(unet.up_blocks):
        attentions = bool(getattr(block, "attentions", None))
        for j in range(len(block.resnets)):
            blocks.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(n + 1) * i + j}.0."))
            if attentions:
                blocks.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(n + 1) * i + j}.1."))
        if block.upsamplers:
            blocks.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(n + 1) * i + n}.{2 if attentions else 1}."))
    blocks += [("mid_block.attentions.0.", "middle_block.1.")] + [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    names = {}
    for name, _ in unet.named_parameters():
        original = fixed.get(name) or _rename(name, blocks, RESNET if ".resnets." in name else {})
        if original is None:
            raise ValueError(f"no original-layout name for UNet parameter {name}")
        names[name] = original
    return names


def vae_tensors(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights under their original names (attention projections as 1x1 convolutions)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed, levels = DIFFUSERS_TO_LDM_MAPPING["vae"], len(vae.encoder.down_blocks)
    resnets, others = [], []  # (diffusers prefix, original prefix)
    for i, (down, up) in enumerate(zip(vae.encoder.down_blocks, vae.decoder.up_blocks)):
        resnets += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(len(down.resnets))]
        resnets += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.") for j in range(len(up.resnets))]
        others += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                   (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")]
    for part in ("encoder", "decoder"):
        resnets += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
    attentions = [(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.") for part in ("encoder", "decoder")]
    out = {}
    for name, tensor in vae.state_dict().items():
        original = (fixed.get(name) or _rename(name, resnets, VAE_RESNET) or _rename(name, attentions, VAE_ATTENTION)
                    or _rename(name, others, {}))
        if original is None:
            raise ValueError(f"no original-layout name for VAE parameter {name}")
        if ".attn_1." in original and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]  # linear -> 1x1 convolution, as the original VAE holds them
        out[original] = tensor
    return out


def clip_tensors(encoder, layout: str) -> dict[str, torch.Tensor]:
    """A text encoder's weights in the original layout: "hf" (OpenAI CLIP, kept in transformers' names)
    or "openclip" (OpenCLIP's, with q, k and v fused into in_proj)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    state = {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in encoder.state_dict().items()}
    if layout == "hf":
        return state
    layers, renames = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"], DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"]
    out = {layers[k]: (v.T.contiguous() if k == "text_projection.weight" else v) for k, v in state.items() if k in layers}
    for name, tensor in state.items():
        if not name.startswith("text_model.encoder.layers.") or ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
            continue
        original = name
        for new, old in renames.items():
            original = original.replace(new, old)
        original = "transformer." + original
        if ".self_attn.v_proj." in name:  # q, k, v -> one in_proj, in that order
            kind = name.rsplit(".", 1)[1]
            q, k = state[name.replace("v_proj", "q_proj")], state[name.replace("v_proj", "k_proj")]
            tensor, original = torch.cat([q, k, tensor]), original.replace(".attn.v_proj." + kind, f".attn.in_proj_{kind}")
        out[original] = tensor
    return out


def checkpoint_tensors(pipe) -> dict[str, torch.Tensor]:
    """Every weight of the pipeline (UNet, VAE, text encoders) under its original single-file name."""
    names = unet_names(denoiser_of(pipe))
    tensors = {UNET_PREFIX + names[n]: p.detach() for n, p in denoiser_of(pipe).named_parameters()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae_tensors(pipe.vae).items()}
    for prefix, layout, encoder in family_of(pipe).checkpoint_text_encoders(pipe):
        tensors |= {prefix + k: v for k, v in clip_tensors(encoder, layout).items()}
    return tensors


def save_checkpoint(pipe, path: Path | str) -> int:
    """Write the pipeline as one safetensors file in the original layout, atomically; returns the tensor count."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint_tensors(pipe).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return len(tensors)
