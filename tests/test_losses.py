"""Each loss against a hand computation, the stop-gradient of AbO, and the SEGA mask."""

import pytest
import torch

from erasekit.guidance import Instruction, cfg, explicit_delta, sega_mask
from erasekit.losses import abo_concept_loss, abo_guidance_target, abo_loss, abo_penalty, esd_loss, esd_target


def test_cfg_by_hand():
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    assert torch.equal(cfg(u, c, 2.0), torch.tensor([5.0, 0.0]))  # 1 + 2*2, 2 + 2*(-1)


def test_esd_target_and_loss_by_hand():
    eps_from, eps_c, eps_u = torch.tensor([0.5]), torch.tensor([2.0]), torch.tensor([1.0])
    target = esd_target(eps_from, eps_c, eps_u, eta=1.5)
    assert target.item() == pytest.approx(0.5 - 1.5 * (2.0 - 1.0))  # -1.0
    student = torch.tensor([[1.0, -1.0]])
    assert esd_loss(student, torch.tensor([[-1.0, -1.0]])).item() == pytest.approx((2.0**2 + 0.0) / 2)


def test_abo_losses_by_hand():
    s_c, s_u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0])
    f_c, f_u, delta = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.25, -0.5])
    target = abo_guidance_target(f_c, f_u, delta, gamma1=2.0)
    assert torch.allclose(target, torch.tensor([2.0 * 1.0 + 0.25, 2.0 * -1.0 - 0.5]))  # [2.25, -2.5]
    concept = abo_concept_loss(s_c, s_u, target, gamma2=3.0)
    # γ2 (s_c − s_u) = [1.5, 3.0]; minus target = [-0.75, 5.5]; mean of squares
    assert concept.item() == pytest.approx((0.75**2 + 5.5**2) / 2)
    penalty = abo_penalty(s_u, f_u)
    assert penalty.item() == pytest.approx((0.25 + 0.0) / 2)
    total, terms = abo_loss(s_c, s_u, target, f_u, gamma2=3.0, lam=5.0)
    assert total.item() == pytest.approx(concept.item() + 5.0 * penalty.item())
    assert terms == pytest.approx({"concept": concept.item(), "penalty": penalty.item()})


def test_stop_gradient_concept_loss_does_not_reach_the_unconditional_branch():
    s_c = torch.randn(2, 4, 3, 3, requires_grad=True)
    s_u = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.randn(2, 4, 3, 3)
    abo_concept_loss(s_c, s_u, target, gamma2=7.5).backward()
    assert s_u.grad is None and s_c.grad.abs().sum() > 0
    s_c.grad = None
    abo_loss(s_c, s_u, target, torch.randn(2, 4, 3, 3), gamma2=7.5, lam=5.0)[0].backward()
    assert s_u.grad is not None and s_u.grad.abs().sum() > 0  # the penalty does move it


def test_sega_mask_keeps_exactly_the_top_share_per_sample():
    torch.manual_seed(0)
    delta = torch.randn(3, 4, 5, 5)  # 100 elements per sample, distinct magnitudes
    delta[1] *= 100  # per-sample thresholds: one loud sample must not swamp the others
    mask = sega_mask(delta, kappa=0.9)
    for i in range(3):
        kept = mask[i].sum().item()
        assert kept == 10
        smallest_kept = delta[i].abs()[mask[i]].min()
        largest_dropped = delta[i].abs()[~mask[i]].max()
        assert smallest_kept > largest_dropped
    with pytest.raises(ValueError):
        sega_mask(delta, kappa=1.0)


def test_explicit_delta_respects_scale_mask_window_and_warmup():
    eps_u = torch.zeros(1, 1, 1, 4)
    eps_a = torch.tensor([[[[1.0, -4.0, 2.0, 3.0]]]])
    erase = Instruction("a", scale=-2.0, kappa=0.5, warmup=2, start=0, end=5)
    # Before warm-up and after the window: nothing.
    assert torch.equal(explicit_delta(eps_u, [eps_a], [erase], step_index=1), torch.zeros_like(eps_u))
    assert torch.equal(explicit_delta(eps_u, [eps_a], [erase], step_index=6), torch.zeros_like(eps_u))
    # Inside: the two largest |Δ| (−4 and 3) kept, times the signed scale.
    expected = torch.tensor([[[[0.0, 8.0, 0.0, -6.0]]]])
    assert torch.equal(explicit_delta(eps_u, [eps_a], [erase], step_index=3), expected)
