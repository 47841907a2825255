"""Early stopping (train.py): the rule by hand, a stopped run is the same run cut short, resume, bad settings.

On a tiny random SD-1.x-shaped pipeline; what early stopping leaves of each concept on the built-in
model is an experiment (benchmarks/results/strength-early-stopping/results.md).
"""

import pytest
import torch

from erasekit import ErasekitError, erase
from erasekit.methods.base import TrajectoryBankMethod
from erasekit.sampling import embed, denoiser_out
from erasekit.train import plateaued

from .conftest import build_tiny_sd, gentle


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_sd("1").save_pretrained(folder, safe_serialization=True)
    return folder


def _weights(erasure):
    return {n: erasure.tensors[n] for n in erasure.names}


def test_plateaued_by_hand():
    assert not plateaued(1.0, 0.94, 0.05)  # fell 6%: go on
    assert plateaued(1.0, 0.96, 0.05)  # fell 4%: stop
    assert plateaued(0.5, 0.6, 0.05)  # rose: stop


@pytest.mark.parametrize("method", ["abo", "esd-x"])
def test_a_run_stops_once_the_held_out_loss_levels_off_and_is_the_same_run_cut_short(tiny_folder, monkeypatch, method):
    # held-out losses scripted: 1.0 before training, then 0.5 and 0.3 (each more than 5% lower), then 0.29 (3% lower)
    script = iter([1.0, 0.5, 0.3, 0.29, 0.1])
    monkeypatch.setattr(TrajectoryBankMethod, "held_out_loss", lambda self: next(script))
    run = dict(method=method, concepts=["circle", "red"], seed=3, **gentle(method))
    stopped = erase(str(tiny_folder), **{**run, "steps": 20}, check_every=2, min_gain=0.05)
    assert stopped.metadata["steps_trained"] == 6 and len(stopped.history) == 6  # the third check, at step 6
    assert [h.get("held_out") for h in stopped.history] == [None, 0.5, None, 0.3, None, 0.29]
    monkeypatch.undo()
    cut = erase(str(tiny_folder), **{**run, "steps": 6})  # no checks: the held-out trajectories draw nothing from the run's generator
    assert all(torch.equal(stopped.tensors[n], cut.tensors[n]) for n in cut.names)
    assert [{k: v for k, v in h.items() if k != "held_out"} for h in stopped.history] == cut.history


def test_the_held_out_loss_is_the_erasing_loss_on_trajectories_training_never_draws(tiny_folder, monkeypatch):
    seen = {}
    real = TrajectoryBankMethod.held_out_loss

    def spy(self):
        seen["held"], seen["bank"], seen["concepts"] = self.held_out, self.bank, self.concept_emb
        return real(self)

    monkeypatch.setattr(TrajectoryBankMethod, "held_out_loss", spy)
    # min_gain 0.99: it stops at the first check, so the final weights are the ones that check measured
    erasure = erase(str(tiny_folder), method="abo", concepts=["circle", "red"], seed=3, **gentle("abo"), check_every=3, min_gain=0.99,
                    held_out_trajectories=2)
    held, bank = seen["held"], seen["bank"]
    assert held.trajectories == 2 and not any(torch.equal(held.x[0], x) for x in bank.x)  # its own trajectories
    assert sorted(set(held.concept.tolist())) == [0, 1]  # one per concept
    assert erasure.metadata["steps_trained"] == 3
    # by hand: mean over every held-out entry of ‖γ2 (ε(x_t, c) − ε(x_t, ∅)) − target‖² (AbO's L_concept), γ2 = 1 here
    uncond = embed(erasure.pipe, [""])
    with torch.no_grad():
        eps_c = denoiser_out(erasure.unet, held.x, held.t, seen["concepts"][held.concept])
        eps_u = denoiser_out(erasure.unet, held.x, held.t, uncond.expand(len(held), -1, -1))
    expected = ((eps_c - eps_u) - held.targets["target"]).square().mean().item()
    assert erasure.history[2]["held_out"] == pytest.approx(expected, rel=1e-4)


def test_resuming_an_early_stopped_run_stops_where_the_uninterrupted_one_did(tiny_folder, tmp_path, monkeypatch):
    # held-out losses scripted by the steps done: from 0.5 at step 2 to 0.49 at step 4 is a fall of 2%, so the run
    # stops at step 4, but only if the best so far (0.5) came back with the checkpoint of step 2
    done = {"n": 0}
    monkeypatch.setattr(TrajectoryBankMethod, "after_step", lambda self: done.update(n=done["n"] + 1))
    monkeypatch.setattr(TrajectoryBankMethod, "held_out_loss", lambda self: {0: 1.0, 2: 0.5, 4: 0.49, 6: 0.3}[done["n"]])
    run = dict(method="abo", concepts=["circle", "red"], seed=3, **{**gentle("abo"), "steps": 12}, check_every=2, min_gain=0.05)
    whole = erase(str(tiny_folder), **run)
    assert whole.metadata["steps_trained"] == 4

    real_draw = TrajectoryBankMethod.draw
    drawn = {"n": 0}

    def interrupted(self, generator):
        drawn["n"] += 1
        if drawn["n"] == 3:  # in step 3, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real_draw(self, generator)

    monkeypatch.setattr(TrajectoryBankMethod, "draw", interrupted)
    ckpt = tmp_path / "ckpt"
    done["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        erase(str(tiny_folder), **run, checkpoint_dir=ckpt, checkpoint_every=2)
    done["n"], drawn["n"] = 2, 10  # the resumed run starts at the checkpoint's step; no more interruptions
    resumed = erase(str(tiny_folder), **run, checkpoint_dir=ckpt, checkpoint_every=2, resume=True)
    assert resumed.history == whole.history and resumed.metadata["steps_trained"] == 4
    assert all(torch.equal(resumed.tensors[n], whole.tensors[n]) for n in whole.names)
    drawn["n"] = 10
    again = erase(str(tiny_folder), **run, checkpoint_dir=ckpt, checkpoint_every=2, resume=True)  # the checkpoint is of a stopped run
    assert drawn["n"] == 10  # no step ran
    assert again.history == whole.history
    assert all(torch.equal(again.tensors[n], whole.tensors[n]) for n in whole.names)


@pytest.mark.parametrize("settings,message", [
    ({"check_every": -1}, "check_every must be >= 0"),
    ({"min_gain": 0.0}, "min_gain must be in (0, 1)"),
    ({"min_gain": 1.0}, "min_gain must be in (0, 1)"),
    ({"held_out_trajectories": 0}, "held_out_trajectories must be >= 1"),
])
def test_bad_early_stopping_settings_are_refused_before_any_work(tiny_folder, settings, message):
    with pytest.raises(ErasekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        erase(str(tiny_folder), method="abo", concepts="circle", **gentle("abo"), **settings)


def test_esd_sampling_from_the_student_has_no_trajectories_to_hold_out(tiny_folder):
    with pytest.raises(ErasekitError, match="early stopping .* sample_from='frozen'"):
        erase(str(tiny_folder), method="esd-x", concepts="circle", **gentle("esd-x"), sample_from="student", check_every=2)
