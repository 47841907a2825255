"""Erasures as LoRAs: the factorisation, both file formats, and loading with diffusers' load_lora_weights."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from erasekit import erase
from erasekit.api import generate_batch
from erasekit.errors import ErasekitError
from erasekit.lora import apply_lora, erasure_lora, factor, save_lora
from erasekit.sampling import embed, denoiser_out

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


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_diffusers_load_lora_weights_gives_what_erasekits_own_loader_gives(family, tmp_path):
    """Both formats, keyed to the family's denoiser (SD3: transformer.* and lora_transformer_*, the keys
    ComfyUI maps for SD3); diffusers reads kohya's for the UNet families only, so SD3's default is peft."""
    from erasekit.families import denoiser_of, family_of
    from erasekit.sampling import latent_shape
    from erasekit.testing import random_sd3_pipeline

    pipe = {"sd": lambda: build_tiny_sd("1"), "sdxl": build_tiny_sdxl, "sd3": random_sd3_pipeline}[family]()
    base, name = copy.deepcopy(pipe), family_of(pipe).denoiser
    erasure = erase(pipe, method="abo", concepts="square", **{**gentle("abo"), "steps": 3})
    x, c = torch.randn(1, *latent_shape(pipe), generator=torch.Generator().manual_seed(0)), embed(base, ["a red square"])
    with torch.no_grad():
        full, untouched = denoiser_out(denoiser_of(pipe), x, 500, c), denoiser_out(denoiser_of(base), x, 500, c)
    for fmt in ("peft", "kohya"):
        path = tmp_path / f"{fmt}.safetensors"
        save_lora(erasure.lora(4), path, fmt, denoiser=name)
        assert all(k.startswith(f"{name}." if fmt == "peft" else f"lora_{name}_") for k in load_file(str(path))), fmt
        ours = copy.deepcopy(base)
        apply_lora(ours, path)
        with torch.no_grad():
            a = denoiser_out(denoiser_of(ours), x, 500, c)
        # rank 4 is close to the full change next to the change itself
        assert (a - full).abs().max() < 0.2 * (full - untouched).abs().max(), fmt
        if fmt == family_of(pipe).lora_format or family != "sd3":
            theirs = copy.deepcopy(base)
            theirs.load_lora_weights(str(path))
            with torch.no_grad():
                b = denoiser_out(denoiser_of(theirs), x, 500, c)
            assert (a - b).abs().max() < 1e-5, fmt
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
        apply_lora(merged, tmp_path / "l.safetensors")
        params, before = dict(merged.unet.named_parameters()), dict(base.unet.named_parameters())
        for module, error in lora.error.items():
            name = f"{module}.weight"
            change = erasure.tensors[name] - before[name].detach()
            missed = (erasure.tensors[name] - params[name].detach()).norm() / change.norm()
            assert missed.item() == pytest.approx(error, abs=1e-4), (rank, module)
            if rank == 64:
                assert error < 1e-5


def _with_spectrum(values: list[float], out: int, inp: int, seed: int) -> torch.Tensor:
    """A matrix whose singular values are `values` (then zeros)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(out, len(values), generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(inp, len(values), generator=g, dtype=torch.float64))[0]
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.T


def test_the_automatic_rank_is_the_smallest_within_one_percent_on_every_layer_and_is_capped():
    from erasekit.lora import MAX_RANK, TOLERANCE

    # a: rank 1 leaves sqrt(1 + 0.05²)/|a| ≈ 9.9% of it, rank 2 leaves 0.5%; b: rank 2 leaves 4.0%, rank 3 leaves 0.1%
    a, b = _with_spectrum([10, 1, 0.05], 12, 10, 0), _with_spectrum([4, 3, 0.2, 0.005], 12, 10, 1)
    base = {"a.weight": torch.zeros(12, 10), "b.weight": torch.zeros(12, 10)}
    lora = erasure_lora(base, {"a.weight": a.float(), "b.weight": b.float()})
    assert lora.rank == 3 and max(lora.error.values()) <= TOLERANCE
    assert erasure_lora(base, {"a.weight": a.float(), "b.weight": b.float()}, 2).error["b"] > TOLERANCE  # one less is not enough
    assert lora.error["a"] == pytest.approx(0.0, abs=1e-6) and lora.error["b"] == pytest.approx(0.005 / (16 + 9 + 0.04 + 0.005**2) ** 0.5, rel=1e-3)
    # a full-rank change past the cap: the cap, and the error it leaves, reported
    full = torch.randn(200, 200, generator=torch.Generator().manual_seed(2))
    capped = erasure_lora({"c.weight": torch.zeros(200, 200)}, {"c.weight": full})
    assert capped.rank == MAX_RANK and capped.error["c"] > TOLERANCE


def test_a_large_deltas_randomised_svd_gives_the_exact_ones_rank_factors_and_error():
    """Past 2 (rank + oversampling) rows and columns the SVD is randomised: checked against the exact one
    on an SDXL-sized key projection's change (a rank-60 erasure plus a faint full-rank residue)."""
    from erasekit.lora import MAX_RANK, TOLERANCE, Spectrum

    g = torch.Generator().manual_seed(3)
    delta = torch.randn(640, 60, generator=g) @ torch.randn(60, 2048, generator=g) / 60 + 1e-4 * torch.randn(640, 2048, generator=g)
    fast = Spectrum.of(delta, MAX_RANK)
    assert fast.S.numel() < 640  # the randomised path was taken
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    assert fast.rank_within(TOLERANCE) == int(((S.square().sum() - S.square().cumsum(0)) <= TOLERANCE**2 * S.square().sum()).nonzero()[0]) + 1
    for rank in (8, 60):
        up, down, error = fast.factors(rank)
        exact = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        assert (up.double() @ down.double() - exact).norm() <= 1e-4 * exact.norm()
        assert error == pytest.approx((S[rank:].square().sum() / S.square().sum()).sqrt().item(), rel=1e-3, abs=1e-6)
    assert torch.equal(Spectrum.of(delta, MAX_RANK).U, fast.U)  # seeded: the same delta, the same LoRA


def test_erase_writes_a_kohya_lora_of_the_automatic_rank_by_default(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    lora = tmp_path / "l.safetensors"
    result = CliRunner().invoke(app, ["erase", "-c", "square", "--method", "uce", "--out", str(tmp_path / "e.safetensors"), "--save-lora", str(lora)])
    assert result.exit_code == 0, result.output
    keys = load_file(str(lora))
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    ranks = {t.shape[0] for k, t in keys.items() if k.endswith("lora_down.weight")}
    assert f"kohya LoRA of rank {max(ranks)}, the smallest within 1% on every layer" in result.output
