"""Concept purification (All but One, Fig. 1a): DDIM inversion with the base model, denoising with the erased one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from erasekit import erase
from erasekit.attacks.purify import purify
from erasekit.errors import ErasekitError
from erasekit.evaluation.metrics import ssim
from erasekit.shapes.world import render_dataset


def rendered(n: int, seed: int = 7) -> list[Image.Image]:
    """Ground-truth images of the shapes world (rendered, not generated)."""
    return [Image.fromarray(a) for a in render_dataset(n, seed)[0]]


def test_inversion_with_the_base_model_and_the_null_prompt_gives_the_input_back(builtin_pipe):
    images = rendered(8)
    result = purify(builtin_pipe, builtin_pipe, images, prompt="", strength=1.0, steps=100)  # 35 steps give 0.73
    similarity = ssim(images, result.reconstructed)
    assert similarity.mean() >= 0.9, similarity
    # the erased-model branch is the same computation: with the base model as "erased" it gives the same images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(result.images, result.reconstructed))


def test_purification_runs_end_to_end_and_changes_only_what_the_erasure_changed(builtin_pipe):
    erased = copy.deepcopy(builtin_pipe)
    erase(erased, method="uce", concepts="red", progress=False)
    images = rendered(4)
    result = purify(builtin_pipe, erased, images, prompt="red", strength=0.6, steps=20)
    assert len(result.images) == 4 and result.images[0].size == images[0].size
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(result.images, result.reconstructed))
    with pytest.raises(ErasekitError, match="strength must be in"):
        purify(builtin_pipe, erased, images, strength=0)


def test_the_purify_command_resizes_a_wrong_sized_image_and_says_so(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    erase("builtin", method="uce", concepts="red", out=tmp_path / "red.safetensors", progress=False)
    rendered(1)[0].resize((96, 96)).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, ["purify", "--erasure", str(tmp_path / "red.safetensors"), "--image", str(tmp_path / "in.png"),
                                      "--concept", "red", "--steps", "10", "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    assert "in.png is 96x96; resized to the model's 64x64" in result.output
    assert "SSIM to the input: purified" in result.output and "'red' detected: input" in result.output
    assert Image.open(tmp_path / "out.png").size == (64, 64) and (tmp_path / "out-compare.png").is_file()
