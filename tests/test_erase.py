"""erase(): resume equivalence, the erasure file round trip, wrong-base refusal, bad input.

These run on a tiny random SD-1.x-shaped pipeline, so they take seconds; the erasure quality
tests on the built-in model are in test_erasure_quality.py.
"""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from erasekit import ErasekitError, erase, load_erasure, load_pipeline
from erasekit.erase import check_concepts
from erasekit.methods import get_method, method_names
from erasekit.methods.base import parse_settings

from .conftest import GENTLE, build_tiny_sd, gentle

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_sd("1").save_pretrained(folder, safe_serialization=True)
    return folder


def _trainable(unet, names):
    params = dict(unet.named_parameters())
    return {n: params[n].detach().clone() for n in names}


@pytest.mark.parametrize(
    "method,extra",
    [("abo", {"replacement": "square"}), ("abo", {"adversary_weight": 1.0}), ("esd-x", {"sample_from": "student"}), ("esd-u", {}), ("sdd", {}),
     ("ablating", {}), ("fmn", {})],
)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_folder, tmp_path, monkeypatch, method, extra):
    full = erase(str(tiny_folder), method=method, concepts=["circle", "red"], seed=3, **gentle(method), **extra)
    expected = _trainable(full.unet, full.names)

    cls = get_method(method)
    real_draw = cls.draw
    calls = {"n": 0}

    def interrupted_draw(self, generator):
        calls["n"] += 1
        if calls["n"] == 5:  # interrupted in step 5, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real_draw(self, generator)

    monkeypatch.setattr(cls, "draw", interrupted_draw)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        erase(str(tiny_folder), method=method, concepts=["circle", "red"], seed=3, checkpoint_dir=ckpt, checkpoint_every=2, **gentle(method), **extra)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 4
    drawn = []
    monkeypatch.setattr(cls, "draw", lambda self, generator: drawn.append(1) or real_draw(self, generator))
    resumed = erase(str(tiny_folder), method=method, concepts=["circle", "red"], seed=3, checkpoint_dir=ckpt, checkpoint_every=2, resume=True, **gentle(method), **extra)
    assert len(drawn) == 2  # only the remaining steps ran
    assert resumed.history == full.history  # the losses before the checkpoint came back with it
    got = _trainable(resumed.unet, resumed.names)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    base = _trainable(load_pipeline(str(tiny_folder)).unet, full.names)
    assert any(not torch.equal(expected[n], base[n]) for n in expected)  # training did move the weights
    assert full.metadata["teacher_bank_trajectories"] == resumed.metadata["teacher_bank_trajectories"]


def test_erasure_records_the_frozen_runs_its_bank_holds(tiny_folder):
    # Ablating's bank holds anchor images, one frozen DDIM run each, not bank_trajectories of them
    erasure = erase(str(tiny_folder), method="ablating", concepts="circle", **{**gentle("ablating"), "anchor_images": 2, "steps": 1})
    assert erasure.metadata["teacher_bank_trajectories"] == 2


def test_erasure_file_round_trip_and_plain_diffusers_loading(tiny_folder, tmp_path):
    out = tmp_path / "erased.safetensors"
    # bank_trajectories left to its rule: 6 steps of batch 4 are 24 draws, one trajectory per 25
    erasure = erase(str(tiny_folder), method="abo", concepts="circle", out=out, **{**gentle("abo"), "bank_trajectories": None})
    stored = load_file(str(out))
    assert set(stored) == set(erasure.names) and all("attn2" in n for n in stored)

    pipe = load_pipeline(str(tiny_folder))
    metadata = load_erasure(pipe, out)
    assert metadata["method"] == "abo" and metadata["concepts"] == ["circle"]
    assert metadata["hyperparameters"] == erasure.metadata["hyperparameters"] and "lam" in metadata["hyperparameters"]
    assert metadata["hyperparameters"]["bank_trajectories"] is None and metadata["teacher_bank_trajectories"] == 1
    assert len(metadata["base_unet_sha256"]) == 16
    params = dict(pipe.unet.named_parameters())
    assert all(torch.equal(params[n], stored[n]) for n in stored)

    plain = load_pipeline(str(tiny_folder))
    result = plain.unet.load_state_dict(load_file(str(out)), strict=False)
    assert not result.unexpected_keys
    assert all(torch.equal(dict(plain.unet.named_parameters())[n], stored[n]) for n in stored)


def test_erasure_for_another_base_model_is_refused(tiny_folder, tmp_path):
    out = tmp_path / "erased.safetensors"
    erase(str(tiny_folder), method="esd-x", concepts="circle", out=out, **gentle("esd-x"))
    other = load_pipeline(str(tiny_folder))
    with torch.no_grad():
        next(other.unet.parameters()).add_(0.01)
    with pytest.raises(ErasekitError, match="was made for base model"):
        load_erasure(other, out)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="esd-z"), "unknown method"),
        (dict(concepts=""), "empty concept"),
        (dict(concepts=["circle", " \t "]), "empty concept"),
        (dict(steps=0), "steps must be positive"),
        (dict(lr=0.0), "learning rate must be positive"),
        (dict(lr=-1e-4), "learning rate must be positive"),
        (dict(gamma9=1.0), "has no setting gamma9"),
        (dict(preset="fastest"), "has no preset"),
        (dict(method="esd-x", replacement="square"), "ESD takes no replacement"),
        (dict(bank_trajectories=0), "bank_trajectories must be >= 1"),
        (dict(method="esd-x", bank_trajectories=0), "bank_trajectories must be >= 1"),
        (dict(bank_trajectories=-2), "bank_trajectories must be >= 0"),
    ],
)
def test_bad_input_fails_clearly(tiny_folder, kwargs, message):
    args = dict(method="abo", concepts="circle", **gentle("abo"))
    args.update(kwargs)
    if args["method"] != "abo":
        args = {k: v for k, v in args.items() if k not in GENTLE["abo"]}
    with pytest.raises(ErasekitError, match=message):
        erase(str(tiny_folder), **args)


def test_unwritable_output_fails_before_training(tiny_folder, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ErasekitError, match="cannot write"):
        erase(str(tiny_folder), method="abo", concepts="circle", out=tmp_path / "a-file" / "e.safetensors", **gentle("abo"))


def test_a_concept_that_tokenises_to_nothing_is_refused():
    class Silent:  # a tokenizer that gives no token for anything
        model_max_length = 77

        def __call__(self, text, add_special_tokens=False):
            return SimpleNamespace(input_ids=[])

    silent = Silent()
    with pytest.raises(ErasekitError, match="tokenises to nothing"):
        check_concepts(silent, ["circle"])


def test_settings_from_the_command_line_are_read_as_json_where_they_parse():
    assert parse_settings(["lam=20", "ptp-weight=0.5", "window_end=null", "trajectory=concept"]) == {
        "lam": 20, "ptp_weight": 0.5, "window_end": None, "trajectory": "concept"}
    with pytest.raises(ErasekitError, match="key=value"):
        parse_settings(["lam"])
    # an int typed for a float setting gives the same config as the float, down to its JSON (a bench cell's key)
    abo = get_method("abo")
    typed_int, typed_float = abo.make_config(**parse_settings(["lam=100"])), abo.make_config(lam=100.0)
    assert json.dumps(dataclasses.asdict(typed_int)) == json.dumps(dataclasses.asdict(typed_float))
    assert type(abo.make_config(steps=7).steps) is int


def test_registry_has_every_weight_editing_method():
    get_method("abo")
    names = {"esd-x", "esd-u", "esd-all", "esd-x-strict", "abo", "uce", "rece", "sdd", "ablating", "fmn", "neg-prompt", "sld"}
    assert set(method_names()) == names
    assert all(get_method(n).name == n for n in names)  # each registry line names its own class


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch):
    from erasekit.train import TrainingDiverged

    cls = get_method("abo")
    real_loss = cls.loss
    calls = {"n": 0}

    def poisoned_loss(self, batch):
        calls["n"] += 1
        loss, terms = real_loss(self, batch)
        return (loss * float("nan"), terms) if calls["n"] == 4 else (loss, terms)

    monkeypatch.setattr(cls, "loss", poisoned_loss)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*last good checkpoint \(step 2\)"):
        erase(str(tiny_folder), method="abo", concepts="circle", checkpoint_dir=ckpt, checkpoint_every=2, **gentle("abo"))
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["params"].values())


def test_resume_refuses_a_checkpoint_of_another_run(tiny_folder, tmp_path):
    ckpt = tmp_path / "ckpt"
    erase(str(tiny_folder), method="abo", concepts="circle", checkpoint_dir=ckpt, **gentle("abo"))
    with pytest.raises(ErasekitError, match="of another run"):
        erase(str(tiny_folder), method="abo", concepts="circle", checkpoint_dir=ckpt, resume=True, **{**gentle("abo"), "lr": 5e-4})
    with pytest.raises(ErasekitError, match="nothing to resume"):
        erase(str(tiny_folder), method="abo", concepts="circle", checkpoint_dir=tmp_path / "none", resume=True, **gentle("abo"))


@pytest.mark.parametrize("trajectory", ["erased", "concept"])
def test_abo_steps_x_t_along_the_chosen_trajectory_with_the_same_targets(tiny_folder, trajectory):
    pipe = load_pipeline(str(tiny_folder))
    abo = get_method("abo")
    method = abo(pipe, ["circle"], abo.make_config(trajectory=trajectory, warmup=0, **GENTLE["abo"]))
    x, t, concept = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), method.scheduler.timesteps[1], torch.tensor([0, 0])
    with torch.no_grad():
        guided, targets = method.teacher_step(x, t, 1, concept)
        eps_uncond, eps_concept = (method.denoiser(x, t, **e.expand(2, -1, -1).unet_kwargs(x.dtype)).sample for e in (method.uncond, method.concept_emb[0]))
    gamma1 = method.config.gamma1
    # Line 11 of Algorithm 1: the target is γ1 guidance plus δ whichever way x_t was reached.
    assert not torch.allclose(targets["target"], gamma1 * (eps_concept - eps_uncond), atol=1e-4)
    # Lines 6-7: Algorithm 1 steps with the target itself; "concept" steps with γ1 guidance alone.
    step_with = targets["target"] if trajectory == "erased" else gamma1 * (eps_concept - eps_uncond)
    torch.testing.assert_close(guided, eps_uncond + step_with, atol=1e-5, rtol=1e-4)


def test_abo_keeps_each_preserved_concepts_guidance_as_the_frozen_model_gives_it(tiny_folder):
    """L_keep (abo.py): at the bank's x_t the target is γ1 (ε*(x_t, p) − ε*(x_t, ∅)) for every kept p, and
    the step's loss adds ‖γ2 (ε_θ(x_t, p) − ε_θ(x_t, ∅)) − target‖², computed here by hand, for the p drawn."""
    pipe = load_pipeline(str(tiny_folder))
    abo = get_method("abo")
    method = abo(pipe, ["circle"], abo.make_config(preserve="square, red", **GENTLE["abo"]))
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), method.scheduler.timesteps[1]
    out = lambda emb: method.denoiser(x, t, **emb.expand(2, -1, -1).unet_kwargs(x.dtype)).sample  # noqa: E731
    with torch.no_grad():
        _, targets = method.teacher_step(x, t, 1, torch.tensor([0, 0]))
        eps_uncond, eps_square, eps_red = out(method.uncond), out(method.preserve_emb[0]), out(method.preserve_emb[1])
    gamma1, gamma2 = method.config.gamma1, method.config.gamma2
    assert targets["keep"].shape == (2, 2, 4, 8, 8)
    torch.testing.assert_close(targets["keep"][:, 0], gamma1 * (eps_square - eps_uncond), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(targets["keep"][:, 1], gamma1 * (eps_red - eps_uncond), atol=1e-5, rtol=1e-4)

    batch = {"x": x, "t": torch.stack([t, t]), "concept": torch.tensor([0, 0]), "kept": torch.tensor([1, 0]), **targets}
    with torch.no_grad():
        loss, terms = method.loss(batch)
    wanted = torch.stack([targets["keep"][0, 1], targets["keep"][1, 0]])
    by_hand = (gamma2 * (torch.stack([eps_red[0], eps_square[1]]) - eps_uncond) - wanted).pow(2).mean()
    assert terms["keep"] == pytest.approx(by_hand.item(), rel=1e-4)
    assert loss.item() == pytest.approx(terms["concept"] + method.config.lam * terms["penalty"] + terms["keep"], rel=1e-4)
    # With two concepts erased each draws half the batch, so L_keep weighs half as much against the step's loss.
    two = abo(pipe, ["circle", "star"], abo.make_config(preserve="square, red", preserve_weight=0.6, **GENTLE["abo"]))
    with torch.no_grad():
        loss, terms = two.loss(batch)
    assert loss.item() == pytest.approx(terms["concept"] + two.config.lam * terms["penalty"] + 0.3 * terms["keep"], rel=1e-4)

    with pytest.raises(ErasekitError, match="'circle' is both erased and preserved"):
        abo(pipe, ["circle"], abo.make_config(preserve="circle", **GENTLE["abo"]))
    with pytest.raises(ErasekitError, match="preserve_weight must be >= 0"):
        abo.make_config(preserve_weight=-1)


def test_abo_keeps_a_concept_along_its_own_trajectory_and_resumes_with_that_bank(tiny_folder, tmp_path):
    """preserve_at="own": a second bank follows each kept concept's own γ1-guided trajectory, with target
    γ1 (ε*(x, p) − ε*(x, ∅)) there, and L_keep is ‖γ2 (ε_θ(x, p) − ε_θ(x, ∅)) − target‖² at that x, by hand here."""
    pipe = load_pipeline(str(tiny_folder))
    abo = get_method("abo")
    method = abo(pipe, ["circle"], abo.make_config(preserve="square, red", preserve_at="own", **GENTLE["abo"]))
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), method.scheduler.timesteps[1]
    kx = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = lambda x, emb: method.denoiser(x, t, **emb.expand(2, -1, -1).unet_kwargs(x.dtype)).sample  # noqa: E731
    with torch.no_grad():
        _, targets = method.teacher_step(x, t, 1, torch.tensor([0, 0]))
        guided, kept = method.kept_teacher_step(kx, t, 1, torch.tensor([1, 0]))
        eps_uncond, eps_kept = out(kx, method.uncond), torch.stack([out(kx, method.preserve_emb[1])[0], out(kx, method.preserve_emb[0])[1]])
    gamma1, gamma2 = method.config.gamma1, method.config.gamma2
    assert "keep" not in targets  # nothing is kept at the erased concept's x_t
    torch.testing.assert_close(kept["target"], gamma1 * (eps_kept - eps_uncond), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided, eps_uncond + gamma1 * (eps_kept - eps_uncond), atol=1e-5, rtol=1e-4)

    wanted = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    batch = {"x": x, "t": torch.stack([t, t]), "concept": torch.tensor([0, 0]), **targets,
             "kept": torch.tensor([1, 0]), "kept_x": kx, "kept_t": torch.stack([t, t]), "kept_target": wanted}
    with torch.no_grad():
        loss, terms = method.loss(batch)
    by_hand = (gamma2 * (eps_kept - eps_uncond) - wanted).pow(2).mean()
    assert terms["keep"] == pytest.approx(by_hand.item(), rel=1e-4)
    assert loss.item() == pytest.approx(terms["concept"] + method.config.lam * terms["penalty"] + terms["keep"], rel=1e-4)
    with pytest.raises(ErasekitError, match="preserve_at must be 'target' or 'own'"):
        abo.make_config(preserve_at="neighbours")

    # The kept bank travels in the checkpoint: stopped at step 2 and resumed, the run is the one that never stopped.
    run = dict(method="abo", concepts="circle", preserve="square", preserve_at="own", bank_trajectories=2, ddim_steps=4, batch_size=2,
               progress=False, **GENTLE["abo"])
    whole = erase(str(tiny_folder), steps=4, **run)
    erase(str(tiny_folder), steps=2, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2, **run)
    assert (tmp_path / "ckpt" / "kept_bank.safetensors").is_file()
    resumed = erase(str(tiny_folder), steps=4, checkpoint_dir=tmp_path / "ckpt", resume=True, **run)
    assert resumed.history == whole.history and all(torch.equal(resumed.tensors[n], whole.tensors[n]) for n in whole.names)


def test_abo_auto_trajectory_is_the_erased_one_only_with_a_replacement():
    from erasekit.methods.abo import trajectory_for

    abo = get_method("abo")
    assert trajectory_for(abo.make_config(), False) == "concept"
    assert trajectory_for(abo.make_config(), True) == "erased"
    assert trajectory_for(abo.make_config(trajectory="concept"), True) == "concept"
    assert trajectory_for(abo.make_config(preset="paper"), False) == "erased"  # Algorithm 1 as written


def test_abo_bank_has_one_trajectory_per_25_draws_unless_set():
    abo = get_method("abo")
    assert abo.make_config(preset="paper").bank_size() == 8  # 200 steps x batch 1
    assert abo.make_config().bank_size() == 24  # 150 x 4
    assert abo.make_config(steps=10).bank_size() == 2  # 40 draws: a part-filled trajectory counts
    assert abo.make_config(bank_trajectories=5).bank_size() == 5
    assert get_method("esd-x").make_config().bank_size() == 32  # other methods keep their fixed bank


def test_an_esd_variant_default_gives_way_to_a_preset_and_to_a_setting():
    esd_u, esd_x = get_method("esd-u"), get_method("esd-x")
    assert esd_u.make_config().eta != esd_x.make_config().eta  # esd-u has its own η
    assert esd_u.make_config(preset="paper").eta == 1.0
    assert esd_u.make_config(eta=2).eta == 2.0 and esd_u.make_config().parameters == "non-attn2"
    own = esd_u.make_config()  # esd-u's slower, longer schedule over a larger bank; esd-x keeps EsdConfig's
    assert (own.lr, own.steps, own.bank_trajectories) == (5e-5, 800, 64)
    assert (esd_x.make_config().lr, esd_x.make_config().steps, esd_x.make_config().bank_trajectories) == (2e-4, 400, 32)
    paper = esd_u.make_config(preset="paper")
    assert (paper.lr, paper.steps) == (1e-5, 1000)
    assert type(esd_u.make_config(lr=1).lr) is float  # a variant's own field keeps EsdConfig's type


def test_abo_refuses_an_unknown_trajectory():
    with pytest.raises(ErasekitError, match="trajectory must be"):
        get_method("abo").make_config(trajectory="student")


@pytest.mark.parametrize("method, setting, what", [("abo", "bank_trajectories", "trajectories"), ("esd-x", "bank_trajectories", "trajectories"),
                                                   ("fmn", "concept_images", "concept images")])
def test_a_bank_smaller_than_its_concepts_grows_to_one_entry_per_concept_with_a_warning(method, setting, what):
    """Entry k of a bank goes to concept k mod n: with fewer entries than concepts, the last ones
    never trained (silently). The bank grows instead, and says so; each concept then has its share."""
    from erasekit import ErasekitWarning

    pipe = load_pipeline("builtin")
    instance = {}
    real_prepare = get_method(method).prepare

    def keep(self, generator, progress):
        real_prepare(self, generator, progress)
        instance["bank"] = self.bank

    concepts = ["circle", "star", "cross"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(get_method(method), "prepare", keep)
        with pytest.warns(ErasekitWarning, match=f"3 concepts but a bank of 2 {what}: grown to 3"):
            erase(pipe, method=method, concepts=concepts, steps=2, ddim_steps=4, progress=False, **{setting: 2})
    assert sorted(set(instance["bank"].concept.tolist())) == [0, 1, 2]
