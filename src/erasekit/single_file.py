"""A whole pipeline as one single-file checkpoint in the original layout (A1111, ComfyUI): Stable Diffusion's,
or SD3's (MMDiT); for FLUX, the transformer alone in Black Forest Labs' names, as FLUX.1 is released.

diffusers converts that layout to its own (`from_single_file`) but not back, so this module writes
the reverse of its conversion: the fixed names come from diffusers' own table
(`DIFFUSERS_TO_LDM_MAPPING`), the block names are derived from the model's structure (so SD 1.x,
SD 2.x, SDXL and the tiny test models all convert), SD3's transformer is renamed by the reverse of
diffusers' SD3 conversion, and the family says which writer its denoiser takes and where its text
encoders go (families/). The round trip through `from_single_file` is the test: every weight comes back equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .families import family_of
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


def t5_tensors(encoder) -> dict[str, torch.Tensor]:
    """A T5 encoder's weights in transformers' names. Its token table is tied (`shared` is the encoder's
    `embed_tokens`): both names are written, as diffusers' reader fills each, the second a copy
    (safetensors stores no tensor twice)."""
    return {k: v.clone() if k == "encoder.embed_tokens.weight" else v for k, v in encoder.state_dict().items()}


@dataclass(frozen=True)
class Blocks:
    """One kind of transformer block in the original layout: its list's name, the modules inside renamed,
    those fused into one projection there, and those the last block stores (shift, scale) (SD3's)."""

    original: str
    renames: dict[str, str]
    fused: dict[str, tuple[str, int, int]]  # inner module -> (original, its place, how many are fused)
    swapped_last: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransformerLayout:
    """How a transformer's diffusers names map to its original single-file names."""

    fixed: dict[str, str]  # whole modules (or a bare tensor) -> original
    blocks: dict[str, Blocks]  # diffusers' block list -> the original's
    swapped: tuple[str, ...] = ("norm_out.linear",)  # modulations the original stores (shift, scale), diffusers (scale, shift)
    scales: tuple[str, ...] = ()  # original modules whose weight is called "scale" (FLUX's RMS norms)


def _fuse(parts: str, places: list[tuple[str, str]]) -> dict[str, tuple[str, int, int]]:
    """Fused projections: for each (diffusers name pattern with {}, original name), its parts in order."""
    names = parts.split()
    return {stem.format(x): (original, i, len(names)) for stem, original in places for i, x in enumerate(names)}


# SD3: the reverse of diffusers' convert_sd3_transformer_checkpoint_to_diffusers
SD3_LAYOUT = TransformerLayout(
    fixed={"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
           "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0", "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
           "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1"},
    blocks={"transformer_blocks": Blocks("joint_blocks", {
        "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj", "attn.norm_q": "x_block.attn.ln_q",
        "attn.norm_k": "x_block.attn.ln_k", "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
        "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
        "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
        "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2", "ff_context.net.0.proj": "context_block.mlp.fc1",
        "ff_context.net.2": "context_block.mlp.fc2"},
        _fuse("q k v", [("attn.to_{}", "x_block.attn.qkv"), ("attn.add_{}_proj", "context_block.attn.qkv"), ("attn2.to_{}", "x_block.attn2.qkv")]),
        swapped_last=("norm1_context.linear",))},  # the last block modulates its text stream as the final layer does
)

# FLUX: the reverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers (Black Forest Labs' names)
FLUX_LAYOUT = TransformerLayout(
    fixed={"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer", "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "time_text_embed.text_embedder.linear_1": "vector_in.in_layer", "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
           "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
           "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1"},
    blocks={"transformer_blocks": Blocks("double_blocks", {
        "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
        "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
        "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
        "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"},
        _fuse("q k v", [("attn.to_{}", "img_attn.qkv"), ("attn.add_{}_proj", "txt_attn.qkv")])),
        "single_transformer_blocks": Blocks("single_blocks", {
            "norm.linear": "modulation.lin", "attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm", "proj_out": "linear2"},
            _fuse("attn.to_q attn.to_k attn.to_v proj_mlp", [("{}", "linear1")]))},  # attention's q, k, v and the MLP's input in one
    scales=("query_norm", "key_norm"),
)


def _swap_scale_shift(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def transformer_tensors(transformer, layout: TransformerLayout) -> dict[str, torch.Tensor]:
    """A transformer's weights under their original single-file names (`layout`), fused projections concatenated."""
    out, fused = {}, {}
    for name, tensor in transformer.state_dict().items():
        module, kind = name.rsplit(".", 1)
        if module in layout.fixed or name in layout.fixed:  # SD3's position table is a bare tensor, not a module's
            original = layout.fixed.get(name) or f"{layout.fixed[module]}.{kind}"
            out[original] = _swap_scale_shift(tensor) if module in layout.swapped else tensor
            continue
        blocks, index, inner = module.split(".", 2)
        block = layout.blocks[blocks]
        if inner in block.fused:
            original, place, parts = block.fused[inner]
            fused.setdefault(f"{block.original}.{index}.{original}.{kind}", [None] * parts)[place] = tensor
        elif inner in block.renames:
            original = block.renames[inner]
            last = int(index) == len(getattr(transformer, blocks)) - 1
            out[f"{block.original}.{index}.{original}.{'scale' if original.endswith(layout.scales) else kind}"] = (
                _swap_scale_shift(tensor) if last and inner in block.swapped_last else tensor)
        else:
            raise ValueError(f"no original-layout name for transformer parameter {name}")
    return out | {name: torch.cat(parts) for name, parts in fused.items()}


def unet_tensors(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under their original names."""
    names = unet_names(unet)
    return {names[n]: p.detach() for n, p in unet.named_parameters()}


def checkpoint_tensors(pipe) -> dict[str, torch.Tensor]:
    """Every weight of the pipeline (denoiser, VAE, text encoders) under its original single-file name;
    the denoiser's alone, unprefixed, where the family's own single files hold only that (FLUX's)."""
    family = family_of(pipe)
    if not family.checkpoint_whole:
        return family.checkpoint_denoiser(pipe)
    tensors = {UNET_PREFIX + k: v for k, v in family.checkpoint_denoiser(pipe).items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae_tensors(pipe.vae).items()}
    for prefix, layout, encoder in family_of(pipe).checkpoint_text_encoders(pipe):
        tensors |= {prefix + k: v for k, v in (t5_tensors(encoder) if layout == "t5" else clip_tensors(encoder, layout)).items()}
    return tensors


def save_checkpoint(pipe, path: Path | str) -> int:
    """Write the pipeline as one safetensors file in the original layout, atomically; returns the tensor count."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint_tensors(pipe).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return len(tensors)
