"""Shared fixtures (the shipped model and classifier, tiny SD 1.x / 2.x / SDXL pipelines built from configs) and helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
torch.set_num_threads(2)


def pixel_diff(a, b) -> np.ndarray:
    """Per-pixel absolute difference of two images, in levels (0-255): batch size can shift float rounding by one."""
    return np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))


@pytest.fixture(scope="session")
def builtin_pipe():
    from erasekit import load_pipeline

    return load_pipeline("builtin")


@pytest.fixture(scope="session")
def detector():
    from erasekit.shapes.classifier import load_classifier

    return load_classifier()


FAST = dict(steps=6, bank_trajectories=3, ddim_steps=6, progress=False)
# A random tiny UNet under guidance 7.5 sends x_t off to huge values within a few DDIM steps (and
# the CPU crawls through them): guide gently here, the paper's scales are tested on the real model.
GENTLE = {
    "abo": dict(gamma1=1.0, gamma2=1.0, erase_scale=1.0, replace_scale=1.0),
    "esd": dict(start_guidance=1.0),
    "sdd": dict(sample_guidance=1.0),
    "ablating": dict(guidance=1.0, anchor_images=3),
    "fmn": dict(guidance=1.0, concept_images=3),
}


def gentle(method: str) -> dict:
    return {**FAST, **GENTLE["esd" if method.startswith("esd") else method]}


TINY_UNET = json.loads((Path(__file__).parent / "data" / "tiny_unet_config.json").read_text())  # also the GPU benchmark's smallest model


def build_tiny_sd(version: str):
    """A random-weight StableDiffusionPipeline shaped like SD 1.x ("1") or SD 2.x ("2"), in miniature."""
    from erasekit.testing import random_pipeline

    sd2 = version == "2"
    attention = dict(attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True) if sd2 else dict(attention_head_dim=4)
    return random_pipeline(TINY_UNET | attention, sd2=sd2)


SDXL_UNET = json.loads((Path(__file__).parent / "data" / "sdxl_unet_config.json").read_text())  # stabilityai/stable-diffusion-xl-base-1.0


def build_tiny_sdxl():
    """A random-weight StableDiffusionXLPipeline: SDXL's real UNet config, scaled down (erasekit.testing)."""
    from erasekit.testing import SDXL_SCALED_DOWN, random_sdxl_pipeline

    return random_sdxl_pipeline(SDXL_UNET | SDXL_SCALED_DOWN)


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session", params=["1", "2"], ids=["sd1", "sd2"])
def tiny_sd_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-sd{request.param}")
    build_tiny_sd(request.param).save_pretrained(folder, safe_serialization=True)
    return folder



def erases_saves_and_reloads_into_plain_diffusers(folder, pipeline_class, method: str, settings: dict, layer: str, tmp_path, **plain_kwargs):
    """Erase "circle" with `method` from the pipeline in `folder`, changing `layer`; the erasure file loads
    into erasekit's pipeline and into plain diffusers' `pipeline_class` (`pipe.transformer.load_state_dict`)
    with the same weights. Returns erasekit's erased pipeline."""
    from safetensors.torch import load_file

    from erasekit import erase, load_erasure, load_pipeline
    from erasekit.families import family_named

    out = tmp_path / "erased.safetensors"
    erasure = erase(str(folder), method=method, concepts="circle", steps=2, progress=False, out=out, **settings)
    assert erasure.metadata["family"] == family_named(pipeline_class.__name__).name and any(layer in n for n in erasure.names)
    assert any(not torch.equal(erasure.tensors[n], erasure.base[n]) for n in erasure.names)
    ours = load_pipeline(str(folder))
    load_erasure(ours, out)
    plain = pipeline_class.from_pretrained(folder, **plain_kwargs)
    assert not plain.transformer.load_state_dict(load_file(str(out)), strict=False).unexpected_keys
    theirs, mine = dict(plain.transformer.named_parameters()), dict(ours.transformer.named_parameters())
    assert all(torch.equal(theirs[n], mine[n]) for n in erasure.names)
    return ours


def red_circles(n: int, size: int = 16):
    """Ground-truth images of red circles at the tiny pipelines' size: concept images a random model never draws."""
    from erasekit.shapes.world import Labels, render

    return [render(Labels("circle", "red", "solid", "grey"), np.random.default_rng(k)).resize((size, size)) for k in range(n)]
