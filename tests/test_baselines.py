"""The baselines: UCE's closed form, SLD's guidance term, and both on the built-in model."""

from __future__ import annotations

import pytest
import torch

from erasekit import erase
from erasekit.api import generate_batch
from erasekit.errors import ErasekitError
from erasekit.guidance import sld_safety_term
from erasekit.losses import ablating_loss, ema_update, fmn_loss, sdd_loss
from erasekit.methods import get_method
from erasekit.methods.sld import PRESETS, SldConfig, SldPipeline
from erasekit.methods.uce import rece_embedding, uce_solution

from .conftest import pixel_diff


def test_uce_closed_form_is_the_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    out_dim, in_dim = 5, 4
    W = torch.randn(out_dim, in_dim, generator=g, dtype=torch.float64)
    ce, cstar, cp = (torch.randn(n, in_dim, generator=g, dtype=torch.float64) for n in (3, 3, 2))
    se, sp, lamb = 1.0, 0.5, 0.1
    # min_W' Σ se||W'ce - W c*||² + Σ sp||W'cp - W cp||² + λ||W' - W||²: stack the rows of one least-squares system.
    A = torch.cat([se**0.5 * ce, sp**0.5 * cp, lamb**0.5 * torch.eye(in_dim, dtype=torch.float64)])
    B = torch.cat([se**0.5 * cstar @ W.T, sp**0.5 * cp @ W.T, lamb**0.5 * W.T])
    expected = torch.linalg.lstsq(A, B).solution.T
    assert torch.allclose(uce_solution(W, ce, cstar, cp, se, sp, lamb), expected, atol=1e-10)


def test_uce_without_preserved_concepts_maps_the_concept_onto_its_destination():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 8, generator=g, dtype=torch.float64)
    ce, cstar = torch.randn(2, 8, generator=g, dtype=torch.float64), torch.randn(2, 8, generator=g, dtype=torch.float64)
    edited = uce_solution(W, ce, cstar, ce.new_zeros((0, 8)), 1.0, 0.0, 1e-6)
    assert torch.allclose(edited @ ce.T, W @ cstar.T, atol=1e-4)


def test_rece_embedding_is_the_least_squares_solution_and_the_concept_itself_before_any_edit():
    g = torch.Generator().manual_seed(2)
    old = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    new = [W + 0.3 * torch.randn(5, 4, generator=g, dtype=torch.float64) for W in old]
    c, mu = torch.randn(2, 4, generator=g, dtype=torch.float64), 0.2
    # min_e Σ_l ||W'_l e − W_l c||² + μ||e||², for each row c: one least-squares system of the stacked matrices.
    A = torch.cat(new + [mu**0.5 * torch.eye(4, dtype=torch.float64)])
    B = torch.cat([W @ c.T for W in old] + [torch.zeros(4, 2, dtype=torch.float64)])
    torch.testing.assert_close(rece_embedding(new, old, c, mu), torch.linalg.lstsq(A, B).solution.T)
    torch.testing.assert_close(rece_embedding(old, old, c, 0.0), c)  # the unedited model: the concept's own embedding


@pytest.mark.parametrize("method", ["uce", "rece"])
def test_uce_edits_only_cross_attention_keys_and_values(builtin_pipe, tmp_path, method):
    import copy

    from erasekit import erase, load_erasure, load_pipeline

    pipe = copy.deepcopy(builtin_pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    erasure = erase(pipe, method=method, concepts="red", preset=None, progress=False, preserve="blue,green")
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("attn2.to_k" in k or "attn2.to_v" in k for k in changed)
    assert set(erasure.names) >= changed
    erasure.save(tmp_path / "uce.safetensors")
    fresh = load_pipeline("builtin")
    load_erasure(fresh, tmp_path / "uce.safetensors")
    assert all(torch.equal(fresh.unet.state_dict()[k], pipe.unet.state_dict()[k]) for k in changed)
    with pytest.raises(ErasekitError, match="attn2-kv"):
        erase(copy.deepcopy(builtin_pipe), method=method, concepts="red", parameters="attn2", progress=False)
    if method == "rece":
        assert len(erasure.history) == 1 + 5 and all("found_to_concept" in h for h in erasure.history[1:])  # UCE's edit, then 5 rounds
        with pytest.raises(ErasekitError, match="rounds must be at least 1"):
            erase(copy.deepcopy(builtin_pipe), method="rece", concepts="red", rounds=0, progress=False)
        with pytest.raises(ErasekitError, match="rece_reg must be positive"):
            erase(copy.deepcopy(builtin_pipe), method="rece", concepts="red", rece_reg=0, progress=False)


@pytest.mark.slow
def test_rece_finds_the_embedding_that_brings_square_back_after_uce_and_its_rounds_erase_it(builtin_pipe):
    """The inner attack first works where the answer is known: on the unerased model it is square's own
    embedding, which draws squares; on UCE's erasure it brings them back. After RECE's rounds, the
    embedding found on the result no longer does (measured: 16 of 16 after UCE, 1 of 16 after RECE)."""
    import copy

    from erasekit.presets import select_parameters
    from erasekit.sampling import embed
    from erasekit.tasks.shapes import ShapesDetector

    square, uncond = embed(builtin_pipe, ["square"]).hidden, embed(builtin_pipe, [""]).hidden
    kv = select_parameters(builtin_pipe.unet, "attn2-kv")  # what UCE and RECE edit
    original = [builtin_pipe.unet.get_parameter(n).detach().clone() for n in kv]

    def squares_from_found(pipe) -> int:
        """Squares drawn (of 16) when RECE's embedding on `pipe` replaces the word "square" and all after it."""
        found = square.clone()
        found[0, 1:] = rece_embedding([pipe.unet.get_parameter(n).detach() for n in kv], original, square[0, 1:], 1e-3)
        images = pipe(prompt_embeds=found.expand(16, -1, -1), negative_prompt_embeds=uncond.expand(16, -1, -1), num_inference_steps=35,
                      guidance_scale=7.5, generator=[torch.Generator().manual_seed(100 + s) for s in range(16)]).images
        return sum(ShapesDetector().detect(images, "square").flags)

    assert squares_from_found(builtin_pipe) >= 14
    uce, rece = copy.deepcopy(builtin_pipe), copy.deepcopy(builtin_pipe)
    erase(uce, method="uce", concepts="square", progress=False)
    erase(rece, method="rece", concepts="square", progress=False)
    assert squares_from_found(uce) >= 12
    assert squares_from_found(rece) <= 4


def test_sld_safety_term_matches_a_hand_computation():
    eps_uncond = torch.tensor([0.0, 0.0, 0.0, 0.0])
    eps_text = torch.tensor([1.0, 0.2, 0.0, -1.0])
    eps_safety = torch.tensor([0.5, 0.5, 0.0, 1.0])
    momentum = torch.tensor([0.1, 0.0, 0.0, 0.0])
    gamma, new_momentum = sld_safety_term(eps_uncond, eps_text, eps_safety, momentum, scale=2.0, threshold=0.01, momentum_scale=0.5, momentum_beta=0.4)
    # diff = text - safety = [0.5, -0.3, 0, -2]; diff < 0.01 for the last three: mu = min(2|diff|, 1) = [0, 0.6, 0, 1]
    mu = torch.tensor([0.0, 0.6, 0.0, 1.0])
    expected = mu * (eps_safety - eps_uncond) + 0.5 * momentum
    assert torch.allclose(gamma, expected)
    assert torch.allclose(new_momentum, 0.4 * momentum + 0.6 * expected)


def test_sld_without_safety_guidance_reproduces_the_pipeline_and_presets_change_it(builtin_pipe):
    jobs = [("a red circle", 0, 7.5), ("a blue square", 1, 7.5)]
    plain = generate_batch(builtin_pipe, jobs, 5)
    off = generate_batch(SldPipeline(builtin_pipe, "red", SldConfig(0, 0.0, 0.0, 0.0, 0.0)), jobs, 5)
    sld = get_method("sld")
    strong = generate_batch(sld.steer(builtin_pipe, "red", sld.make_config("max")), jobs, 5)
    for a, b in zip(plain, off):
        # Float rounding only: SLD runs the UNet on a batch of three where the pipeline runs two, and a
        # pixel near a rounding boundary may land one level apart (measured: 1 level, under 0.01% of pixels).
        diff = pixel_diff(a, b)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert pixel_diff(plain[0], strong[0]).mean() > 10  # measured 63 levels on average
    assert list(PRESETS) == ["weak", "medium", "strong", "max"]
    assert sld.make_config() == sld.make_config("medium")  # the default is the paper's medium set
    with pytest.raises(ErasekitError, match="preset"):
        sld.make_config("extreme")


def test_neg_prompt_samples_with_the_concept_as_negative_prompt(builtin_pipe):
    jobs = [("a red circle", 0, 7.5)]
    neg = get_method("neg-prompt")
    steered = generate_batch(neg.steer(builtin_pipe, "red", neg.make_config()), jobs, 5)
    assert pixel_diff(steered[0], generate_batch(builtin_pipe, jobs, 5, negative_prompt="red")[0]).max() == 0
    with pytest.raises(ErasekitError, match="changes no weights"):
        erase(builtin_pipe, method="neg-prompt", concepts="red")
    with pytest.raises(ErasekitError, match="changes the model's weights"):
        get_method("abo").steer(builtin_pipe, "red", get_method("abo").make_config())


def test_sdd_ema_update_by_hand():
    ema, live = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0], requires_grad=True)
    ema_update(ema, live, 0.9)
    assert torch.allclose(ema, torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2]))
    assert not ema.requires_grad


def test_sdd_and_ablating_losses_by_hand_send_no_gradient_to_the_target():
    student = torch.tensor([1.0, 2.0], requires_grad=True)
    target = torch.tensor([0.0, 4.0], requires_grad=True)
    for loss_fn in (sdd_loss, ablating_loss):
        loss = loss_fn(student, target)
        assert loss.item() == pytest.approx((1 + 4) / 2)
        student.grad = target.grad = None
        loss.backward()
        assert torch.allclose(student.grad, torch.tensor([1.0, -2.0]))  # d/ds mean((s - t)^2) = (s - t)
        assert target.grad is None


def test_fmn_attention_loss_and_probe_on_a_hand_built_attention():
    from diffusers.models.attention_processor import Attention

    from erasekit.attention import AttentionProbe

    # Two layers' maps (batch*heads=1, 2 queries, 3 tokens), concept on token 1 only (masked maps).
    maps = [torch.tensor([[[0.0, 0.5, 0.0], [0.0, 0.1, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])]
    assert fmn_loss(maps).item() == pytest.approx(((0.25 + 0.01) / 2 + (1.0 + 0.0) / 2) / 2)

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    hidden, context = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    mask = torch.tensor([[0.0, 1.0, 0.0]])
    probe = AttentionProbe(mask)
    out = probe(attn, hidden, context)
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    k = attn.head_to_batch_dim(attn.to_k(context))
    probs = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)
    assert torch.allclose(probe.maps[0], probs * mask, atol=1e-6)
    plain = attn(hidden, context)  # the probe leaves the layer's output unchanged
    assert torch.allclose(out, plain, atol=1e-6)
