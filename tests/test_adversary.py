"""Adversarial training (adversary.py): the attacker's step by hand, the loss at the attacked
embedding by hand, and, on the built-in model, that the attacker brings a concept to the unerased
model before it is trusted against a student."""

import pytest
import torch

from erasekit import ErasekitError, erase, load_pipeline
from erasekit.adversary import Adversary, TokenAdversary, descend, project
from erasekit.methods import get_method

from .conftest import GENTLE, build_tiny_sd, gentle


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_sd("1").save_pretrained(folder, safe_serialization=True)
    return folder


def test_projection_scales_back_only_what_lies_outside_the_ball():
    delta = torch.zeros(2, 1, 2)
    delta[0, 0] = torch.tensor([3.0, 4.0])  # norm 5, outside a ball of 2
    delta[1, 0] = torch.tensor([0.6, 0.8])  # norm 1, inside
    got = project(delta, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(got[0, 0], torch.tensor([1.2, 1.6]))
    torch.testing.assert_close(got[1, 0], torch.tensor([0.6, 0.8]))


def test_a_step_goes_its_length_against_the_gradient_and_a_concept_without_gradient_stays():
    delta = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    grad = torch.tensor([[[0.0, 10.0]], [[0.0, 0.0]]])
    got = descend(delta, grad, step=torch.tensor([0.5, 0.5]), radius=torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(got[0, 0], torch.tensor([1.0, -0.5]))  # 0.5 along −g/‖g‖
    torch.testing.assert_close(got[1, 0], torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("method", ["abo", "esd-x"])
def test_the_loss_adds_the_concept_loss_at_the_attacked_embedding(tiny_folder, method):
    """AbO: w ‖γ2 (ε_θ(x_t, e + δ) − ε_θ(x_t, ∅)) − target‖²; ESD: w ‖ε_θ(x_t, e + δ) − target‖², by hand."""
    pipe = load_pipeline(str(tiny_folder))
    cls = get_method(method)
    settings = GENTLE["abo" if method == "abo" else "esd"]
    m = cls(pipe, ["circle", "red"], cls.make_config(adversary_weight=0.7, **settings))
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), m.scheduler.timesteps[1]
    concept = torch.tensor([0, 1])
    with torch.no_grad():
        _, targets = m.teacher_step(x, t, 1, concept)
    assert set(targets) >= {"target", "eps_concept"}
    m.adversary.delta = torch.randn(m.adversary.delta.shape, generator=torch.Generator().manual_seed(1))
    attacked = m.adversary.conditioning(concept)
    batch = {"x": x, "t": torch.stack([t, t]), "concept": concept, "attacked": attacked, **targets}
    with torch.no_grad():
        loss, terms = m.loss(batch)
        eps_attacked = m.denoiser(x, t, **attacked.unet_kwargs(x.dtype)).sample
        eps_uncond = m.denoiser(x, t, **m.uncond.expand(2, -1, -1).unet_kwargs(x.dtype)).sample
    if method == "abo":
        by_hand = (m.config.gamma2 * (eps_attacked - eps_uncond) - targets["target"]).pow(2).mean()
        rest = terms["concept"] + m.config.lam * terms["penalty"]
    else:
        by_hand = (eps_attacked - targets["target"]).pow(2).mean()
        rest = terms["esd"]
    assert terms["attacked"] == pytest.approx(by_hand.item(), rel=1e-4)
    assert loss.item() == pytest.approx(rest + 0.7 * terms["attacked"], rel=1e-4)
    torch.testing.assert_close(attacked.hidden, m.concept_emb.hidden + m.adversary.delta)


def test_the_attacker_moves_within_its_ball_and_training_adds_its_term_to_every_step(tiny_folder):
    pipe = load_pipeline(str(tiny_folder))
    abo = get_method("abo")
    method = abo(pipe, ["circle", "red"], abo.make_config(adversary_weight=1.0, adversary_radius=0.2, **GENTLE["abo"]))
    generator = torch.Generator().manual_seed(0)
    method.prepare(generator, progress=False)
    method.denoiser.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k").weight.data.mul_(1.5)  # a student, not the frozen model
    for _ in range(30):
        method.draw(generator)
    moved = method.adversary.delta.flatten(1).norm(dim=1)
    allowed = 0.2 * method.concept_emb.hidden.flatten(1).norm(dim=1)
    assert (moved > 0).all() and (moved <= allowed * (1 + 1e-5)).all()

    plain = erase(str(tiny_folder), method="abo", concepts=["circle"], seed=0, **gentle("abo"))
    attacked = erase(str(tiny_folder), method="abo", concepts=["circle"], seed=0, adversary_weight=1.0, **gentle("abo"))
    assert all("attacked" in terms for terms in attacked.history)
    assert attacked.history[0]["concept"] == pytest.approx(plain.history[0]["concept"], rel=1e-5)  # the same bank and the same first draw


@pytest.mark.parametrize("kwargs, message", [
    (dict(adversary_weight=-1.0), "adversary_weight must be >= 0"),
    (dict(adversary_radius=0.0), "adversary_radius must be positive"),
    (dict(adversary_step=1.5), "adversary_step must be in"),
    (dict(adversary="prompt"), "adversary must be 'embedding' or 'token'"),
    (dict(adversary_lr=0.0), "adversary_lr must be positive"),
])
def test_bad_adversary_settings_are_refused(kwargs, message):
    with pytest.raises(ErasekitError, match=message):
        get_method("abo").make_config(**kwargs)


def test_the_token_attacker_starts_at_the_words_and_its_step_is_adam_on_the_inner_loss(tiny_folder):
    """Started at each concept's words it gives the concept's own embedding; its step is one Adam step
    on ‖ε_θ(x_t, e(a)) − ε*(x_t, c)‖² (mean over the batch), by hand, and moves nothing but the tokens."""
    from erasekit.attacks.tokens import placeholder
    from erasekit.families import family_of
    from erasekit.sampling import denoiser_out, embed

    pipe = load_pipeline(str(tiny_folder))
    attacker = TokenAdversary(pipe, ["circle", "red"], lr=0.01, device="cpu")
    concept = torch.tensor([1, 0, 1])
    torch.testing.assert_close(attacker.conditioning(concept).hidden, embed(pipe, ["red", "circle", "red"]).hidden)

    x, t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 300, 700])
    wanted = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    start = attacker.vector.detach().clone()
    by_hand = torch.nn.Parameter(start.clone())
    with placeholder(pipe, "<x>", lambda n: by_hand[concept]):
        out = denoiser_out(pipe.unet, x, t, family_of(pipe).encode(pipe, ["<x>"] * 3))
        ((out - wanted).pow(2).flatten(1).mean(1).mean()).backward()
    adam = torch.optim.Adam([by_hand], lr=0.01)
    adam.step()
    weights = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    attacked = attacker.attack(pipe.unet, x, t, concept, wanted)
    torch.testing.assert_close(attacker.vector.detach(), by_hand.detach())
    assert not torch.equal(attacker.vector.detach(), start)
    assert all(torch.equal(p, weights[n]) and p.grad is None for n, p in pipe.unet.named_parameters())
    torch.testing.assert_close(attacked.hidden, attacker.conditioning(concept).hidden)


def test_training_against_the_token_attacker_resumes_exactly(tiny_folder, tmp_path):
    """The tokens and their Adam moments travel in the checkpoint: stopped at step 2 and resumed, the
    run is the one that never stopped, and every step took the attacked term."""
    run = dict(method="abo", concepts="circle,red", adversary_weight=1.0, adversary="token", bank_trajectories=2, ddim_steps=4, batch_size=2,
               progress=False, **GENTLE["abo"])
    whole = erase(str(tiny_folder), steps=4, **run)
    erase(str(tiny_folder), steps=2, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2, **run)
    resumed = erase(str(tiny_folder), steps=4, checkpoint_dir=tmp_path / "ckpt", resume=True, **run)
    assert all("attacked" in terms for terms in whole.history)
    assert resumed.history == whole.history and all(torch.equal(resumed.tensors[n], whole.tensors[n]) for n in whole.names)


def test_esd_trains_adversarially_only_on_the_bank():
    with pytest.raises(ErasekitError, match="runs on the teacher bank"):
        get_method("esd-x").make_config(adversary_weight=1.0, sample_from="student")


@pytest.mark.slow
def test_each_attacker_brings_a_concept_to_the_unerased_model_from_another_concepts_words():
    """Before an attacker is used against a student it must work where the answer is known: started
    at "square", aimed at the unerased model's own circle outputs on circle's bank, each (the embedding
    one, the token one) must move until the model draws circles from it (square's own embedding draws none)."""
    from erasekit.sampling import embed
    from erasekit.tasks.shapes import ShapesDetector

    pipe = load_pipeline("builtin")
    abo = get_method("abo")
    method = abo(pipe, ["circle"], abo.make_config(adversary_weight=1.0))
    generator = torch.Generator().manual_seed(0)
    method.prepare(generator, progress=False)  # circle's teacher bank: x_t and ε*(x_t, circle)
    square = embed(pipe, ["square"])
    attacker = Adversary(square, radius=0.6, step=0.05)
    for _ in range(150):
        batch = method.bank.draw(8, generator)
        attacker.attack(method.denoiser, batch["x"], batch["t"], torch.zeros(8, dtype=torch.long), batch["eps_concept"])

    def draw(hidden):
        images = pipe(prompt_embeds=hidden.expand(8, -1, -1), negative_prompt_embeds=method.uncond.hidden.expand(8, -1, -1), num_inference_steps=35,
                      guidance_scale=7.5, generator=[torch.Generator().manual_seed(s) for s in range(8)]).images
        return ShapesDetector().detect(images, "circle").flags

    assert sum(draw(square.hidden)) == 0
    moved = attacker.conditioning(torch.tensor([0])).hidden
    assert (moved - square.hidden).norm() <= 0.6 * square.hidden.norm() + 1e-3
    assert sum(draw(moved)) >= 6

    # The token attacker, started at the word "square", reads its way to circles through the text encoder.
    tokens = TokenAdversary(pipe, ["circle"], lr=5e-3, device=method.device, init=["square"])
    for _ in range(150):
        batch = method.bank.draw(8, generator)
        tokens.attack(method.denoiser, batch["x"], batch["t"], torch.zeros(8, dtype=torch.long), batch["eps_concept"])
    assert sum(draw(tokens.conditioning(torch.tensor([0])).hidden)) >= 6
