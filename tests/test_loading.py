"""load_pipeline: every source kind loads through one code path, and every bad one fails clearly."""

import json
import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline

from erasekit import generate, load_pipeline
from erasekit.model import ModelLoadError


def test_builtin_is_a_stable_diffusion_pipeline(builtin_pipe):
    assert isinstance(builtin_pipe, StableDiffusionPipeline)
    assert builtin_pipe.unet.dtype == torch.float32  # stored in fp16, computed in fp32 on the CPU
    assert builtin_pipe.vae_scale_factor * builtin_pipe.unet.config.sample_size == 64


def test_sd_folders_load_and_generate(tiny_sd_folder):
    pipe = load_pipeline(str(tiny_sd_folder))
    assert isinstance(pipe, StableDiffusionPipeline)
    saved = json.loads((tiny_sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert pipe.scheduler.config.prediction_type == saved["prediction_type"]
    images = generate(pipe, ["a red circle"], n=1, steps=2, progress=False)
    assert images[0].size == (16, 16)


@pytest.mark.parametrize("name", ["model.ckpt", "model.bin", "model.pt"])
def test_pickles_are_refused_unopened(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not even a pickle")  # were it opened, the error would differ
    with pytest.raises(ModelLoadError, match="pickle"):
        load_pipeline(str(path))


def test_broken_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not load single-file checkpoint model.safetensors"):
        load_pipeline(str(path))


def test_unknown_path_and_missing_hub_model(tmp_path):
    with pytest.raises(ModelLoadError, match="model not found"):
        load_pipeline(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_pipeline("CompVis/stable-diffusion-v1-4")


@pytest.fixture
def sd1_copy(tmp_path, tiny_sd_folder):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_sd_folder, folder)
    return folder


@pytest.mark.parametrize("tiny_sd_folder", ["1"], indirect=True)
def test_folder_missing_a_component(sd1_copy):
    shutil.rmtree(sd1_copy / "unet")
    with pytest.raises(ModelLoadError, match="component folder 'unet/' is missing"):
        load_pipeline(str(sd1_copy))


@pytest.mark.parametrize("tiny_sd_folder", ["1"], indirect=True)
def test_folder_with_only_pickled_weights(sd1_copy):
    weights = sd1_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_pipeline(str(sd1_copy))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_pipeline(str(tmp_path))
