"""Erasures as LoRAs: the factorisation, both file formats, and loading with diffusers' load_lora_weights."""

from __future__ import annotations

import copy

import pytest
import torch

from erasekit import erase
from erasekit.api import generate_batch
from erasekit.errors import ErasekitError
from erasekit.lora import apply_lora, erasure_lora, factor, save_lora
from erasekit.sampling import embed, unet_out

from .conftest import build_tiny_sd, build_tiny_sdxl, gentle, pixel_diff


def test_factor_is_the_truncated_svd_with_its_eckart_young_error():
    # ΔW = 3 u1 v1^T + 1 u2 v2^T with orthonormal u, v: rank 1 keeps the 3, and leaves 1 of sqrt(3² + 1²).
    u = torch.linalg.qr(torch.randn(5, 2, generator=torch.Generator().manual_seed(0)))[0]
    v = torch.linalg.qr(torch.randn(4, 2, generator=torch.Generator().manual_seed(1)))[0]
    delta = 3 * torch.outer(u[:, 0], v[:, 0]) + torch.outer(u[:, 1], v[:, 1])
    up, down, error = factor(delta, 1)
    assert up.shape == (5, 1) and down.shape == (1, 4)
    assert torch.allclose(up @ down, 3 * torch.outer(u[:, 0], v[:, 0]), atol=1e-5)
    assert error == pytest.approx(1 / 10**0.5, rel=1e-6)
    up, down, error = factor(delta, 8)  # a rank above the matrix's is exact
    assert up.shape == (5, 4) and torch.allclose(up @ down, delta, atol=1e-6) and error < 1e-6  # min(5, 4) singular values


def test_a_convolutions_delta_factors_into_a_kxk_and_a_1x1_convolution():
    delta = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    up, down, _ = factor(delta, 64)
    assert up.shape == (6, 6, 1, 1) and down.shape == (6, 3, 3, 3)
    assert torch.allclose((up.flatten(1) @ down.flatten(1)).reshape(delta.shape), delta, atol=1e-5)


def test_only_weight_matrices_become_factors_and_the_rest_is_listed_as_dropped():
    base = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3), "n.weight": torch.ones(3), "c.weight": torch.zeros(4, 2)}
    erased = {"a.weight": torch.ones(3, 2), "a.bias": torch.ones(3), "n.weight": 2 * torch.ones(3), "c.weight": torch.zeros(4, 2)}
    lora = erasure_lora(base, erased, 4)
    assert set(lora.up) == {"a"} and lora.dropped == ["a.bias", "n.weight"]  # c did not change
    with pytest.raises(ErasekitError, match="rank must be at least 1"):
        erasure_lora(base, erased, 0)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_diffusers_load_lora_weights_gives_what_erasekits_own_loader_gives(family, tmp_path):
    pipe = build_tiny_sd("1") if family == "sd" else build_tiny_sdxl()
    base = copy.deepcopy(pipe)
    erasure = erase(pipe, method="abo", concepts="square", **{**gentle("abo"), "steps": 3})
    x, c = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), embed(base, ["a red square"])
    with torch.no_grad():
        full, untouched = unet_out(pipe.unet, x, 500, c), unet_out(base.unet, x, 500, c)
    for fmt in ("peft", "kohya"):
        path = tmp_path / f"{fmt}.safetensors"
        save_lora(erasure.lora(4), path, fmt)
        ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
        apply_lora(ours.unet, path)
        theirs.load_lora_weights(str(path))
        with torch.no_grad():
            a, b = unet_out(ours.unet, x, 500, c), unet_out(theirs.unet, x, 500, c)
        assert (a - b).abs().max() < 1e-5, fmt
        # rank 4 is close to the full change next to the change itself
        assert (a - full).abs().max() < 0.2 * (full - untouched).abs().max(), fmt
    if family == "sd":  # and the images agree, to float rounding
        job = [("a red square", 0, 7.5)]
        images = [generate_batch(p, job, steps=4)[0] for p in (ours, theirs)]
        assert pixel_diff(*images).max() <= 1


def test_at_full_rank_the_lora_is_the_erasure_and_below_it_the_reported_error(tmp_path):
    """Per weight: what merging the file misses of the change is the error the factorisation reported."""
    pipe = build_tiny_sd("1")
    base = copy.deepcopy(pipe)
    erasure = erase(pipe, method="esd-x", concepts="square", **gentle("esd-x"))
    for rank in (1, 64):
        lora = erasure.lora(rank)
        save_lora(lora, tmp_path / "l.safetensors", "peft")
        merged = copy.deepcopy(base)
        apply_lora(merged.unet, tmp_path / "l.safetensors")
        params, before = dict(merged.unet.named_parameters()), dict(base.unet.named_parameters())
        for module, error in lora.error.items():
            name = f"{module}.weight"
            change = erasure.tensors[name] - before[name].detach()
            missed = (erasure.tensors[name] - params[name].detach()).norm() / change.norm()
            assert missed.item() == pytest.approx(error, abs=1e-4), (rank, module)
            if rank == 64:
                assert error < 1e-5
