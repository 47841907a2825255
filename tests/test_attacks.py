"""Attacks: each first reaches its concept on the unerased model, then runs against an erasure and saves what it found."""

from __future__ import annotations

import copy

import pytest

from erasekit import erase
from erasekit.api import generate_batch
from erasekit.attacks import get_attack
from erasekit.errors import ErasekitError
from erasekit.evaluation.detectors import ShapesDetector
from erasekit.evaluation.prompts import load_prompts


def targets(concept: str) -> list[str]:
    return [p.text for p in load_prompts("target", concept)["target"]]


def test_paraphrase_reaches_the_concept_on_the_unerased_model(builtin_pipe):
    result = get_attack("paraphrase").run(builtin_pipe, "square", targets("square"), [0], ShapesDetector())
    assert result.budget["paraphrases"] == ["box"] and result.n_prompts == 11
    assert result.asr_attack_only >= 0.9  # "box" alone draws squares: a low ASR on an erasure will mean robustness


def test_paraphrase_against_an_erasure_reports_before_and_after_and_saves_replayable_prompts(builtin_pipe):
    erased = copy.deepcopy(builtin_pipe)
    erase(erased, method="uce", concepts="red", progress=False)
    detector = ShapesDetector()
    result = get_attack("paraphrase").run(erased, "red", targets("red"), [0, 1], detector)
    assert result.budget == {"paraphrases": ["crimson", "scarlet"], "images": 8 * 2 * 3}
    assert result.asr_before <= result.asr_after and result.asr_attack_only <= result.asr_after
    assert len({(f["prompt"], f["seed"]) for f in result.found}) == round(result.asr_attack_only * result.n_prompts)
    if result.found:  # replay: the saved prompt and seed give the concept again
        hit = result.found[0]
        image = generate_batch(erased, [(hit["attack_prompt"], hit["seed"], 7.5)], steps=35)
        assert detector.detect(image, "red").flags == [True]


def test_an_unknown_attack_is_refused_by_name():
    with pytest.raises(ErasekitError, match="unknown attack 'gcg'; choose from paraphrase"):
        get_attack("gcg")
