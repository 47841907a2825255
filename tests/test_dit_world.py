"""The second built-in world: an SD3 transformer trained by flow matching on the UNet world's VAE and text encoder."""

from __future__ import annotations

import json

import pytest
import torch

from erasekit.errors import ErasekitError


@pytest.mark.slow
def test_dit_training_writes_an_sd3_pipeline_on_the_worlds_vae_and_text_encoder(tmp_path):
    """`shapes train --denoiser dit` (its smoke schedule): an SD3 folder whose two CLIPs are the UNet
    world's encoder and whose VAE is its VAE, frozen, with a shift and scale that whiten the latents;
    a longer run resumes a shorter one, another config is refused, and the folder draws."""
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from erasekit import generate, load_pipeline
    from erasekit.assets import builtin_pipeline_dir
    from erasekit.shapes.train import TrainConfig, train_all

    quick = TrainConfig(denoiser="dit", n_images=256, denoiser_steps=20, denoiser_cycle=20, denoiser_batch=4, checkpoint_every=10, warmup_steps=2)
    folder = train_all(tmp_path / "run", quick)
    longer = train_all(tmp_path / "run", TrainConfig(**{**vars(quick), "denoiser_steps": 30}))
    assert longer == folder
    steps = [int(row.split(",")[1]) for row in (tmp_path / "run" / "train_log.csv").read_text().splitlines() if row.startswith("transformer,")]
    assert steps == [10, 20, 30]  # logged every 10 steps: resumed at step 20, not from the start
    with pytest.raises(ErasekitError, match="another config"):
        train_all(tmp_path / "run", TrainConfig(**{**vars(quick), "denoiser_lr": 1e-3}))

    world = builtin_pipeline_dir()
    pipe = load_pipeline(folder)
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None
    assert pipe.tokenizer.model_max_length == 32
    encoder = load_file(world / "text_encoder" / "model.safetensors")
    for ours in (pipe.text_encoder, pipe.text_encoder_2):
        state = ours.text_model.state_dict()
        assert all(torch.equal(state[k].half(), v) for k, v in encoder.items())
        assert torch.equal(ours.text_projection.weight, torch.eye(96))
    vae = load_file(world / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(pipe.vae.state_dict()[k].half(), v) for k, v in vae.items())
    config = json.loads((folder / "vae" / "config.json").read_text())
    assert config["shift_factor"] != 0 and config["scaling_factor"] > 0
    image = generate(pipe, ["a red circle"], steps=2, seed=0)[0]
    assert image.size == (64, 64)
