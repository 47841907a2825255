"""Whole erased models as single-file checkpoints in the original layout: diffusers' from_single_file reads back every weight."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from erasekit import erase, load_pipeline
from erasekit.single_file import checkpoint_tensors, save_checkpoint, unet_names

from .conftest import SDXL_UNET, build_tiny_sd, build_tiny_sdxl, gentle


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_an_erased_model_round_trips_through_diffusers_from_single_file(family, tmp_path):
    pipe = build_tiny_sdxl() if family == "sdxl" else build_tiny_sd(family[-1])
    folder = tmp_path / "base"
    pipe.save_pretrained(folder, safe_serialization=True)
    base = copy.deepcopy(pipe.unet.state_dict())
    erasure = erase(pipe, method="esd-x", concepts="square", **{**gentle("esd-x"), "steps": 2})
    assert any(not torch.equal(base[n], pipe.unet.state_dict()[n]) for n in erasure.names)
    path = tmp_path / "erased.safetensors"
    save_checkpoint(pipe, path)
    back = load_pipeline(str(path), config=str(folder))  # diffusers' own conversion from the original layout
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for component in components:
        mine, theirs = getattr(pipe, component).state_dict(), getattr(back, component).state_dict()
        assert set(mine) == set(theirs), component
        different = [k for k in mine if not torch.equal(mine[k], theirs[k].to(mine[k].dtype))]
        assert not different, (component, different[:3])


def test_the_names_are_those_the_original_checkpoints_use(tmp_path):
    pipe = build_tiny_sd("1")
    keys = set(checkpoint_tensors(pipe))
    # a few names every SD 1.x checkpoint has (A1111 and ComfyUI look them up)
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.out.2.weight",
            "first_stage_model.decoder.mid.attn_1.q.weight", "first_stage_model.encoder.down.0.block.0.norm1.weight",
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"} <= keys
    assert checkpoint_tensors(pipe)["first_stage_model.decoder.mid.attn_1.q.weight"].dim() == 4  # 1x1 convolution


def test_full_size_unet_names_match_the_original_layouts():
    from diffusers import UNet2DConditionModel

    sd14 = json.loads((__import__("pathlib").Path(__file__).parent / "data" / "sd14_unet_config.json").read_text())
    for config, expected in (
        (sd14, {"input_blocks.3.0.op.weight", "input_blocks.11.0.in_layers.0.weight", "output_blocks.2.1.conv.weight",
                "output_blocks.5.2.conv.weight", "output_blocks.11.1.transformer_blocks.0.attn2.to_v.weight", "middle_block.2.out_layers.3.weight"}),
        (SDXL_UNET, {"label_emb.0.0.weight", "label_emb.0.2.bias", "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                     "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight", "output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.weight",
                     "middle_block.1.transformer_blocks.9.attn1.to_out.0.weight"}),
    ):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        names = unet_names(unet)
        assert len(set(names.values())) == len(names)  # one original name per parameter
        assert expected <= set(names.values()), expected - set(names.values())


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_saved_pipeline_folder_keys_its_clip_encoders_as_comfyui_reads_them_and_diffusers_reads_it_back(family, tmp_path):
    """transformers 5 writes a CLIPTextModel without `text_model.`, where ComfyUI's folder loader looks;
    Erasure.save_pipeline writes the prefix, and the folder still loads to the same weights."""
    from safetensors import safe_open

    pipe = build_tiny_sdxl() if family == "sdxl" else build_tiny_sd("1")
    erasure = erase(pipe, method="esd-x", concepts="square", **{**gentle("esd-x"), "steps": 2})
    folder = erasure.save_pipeline(tmp_path / "erased")
    encoders = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for name in encoders:
        keys = [k for f in (folder / name).glob("*.safetensors") for k in safe_open(str(f), "pt").keys()]
        assert keys and all(k.startswith("text_model.") or k == "text_projection.weight" for k in keys), name
    back = load_pipeline(str(folder))
    for component in ["unet", "vae", *encoders]:
        mine, theirs = getattr(pipe, component).state_dict(), getattr(back, component).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), component
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written whole: no temporary folder left
