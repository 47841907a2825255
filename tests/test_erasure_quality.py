"""End to end on the built-in model: the erased concept is gone, the others are not (slow).

The concept is a colour, the attribute the default settings were tuned on; shapes and textures
need per-concept settings (see the README's bench table).
"""

import pytest

from erasekit import erase, load_pipeline
from erasekit.evaluation.detectors import ShapesDetector
from erasekit.evaluation.evaluate import evaluate
from erasekit.evaluation.prompts import load_prompts


def _erase_red(method):
    erased = load_pipeline("builtin")
    erase(erased, method=method, concepts="red", seed=0, progress=False)
    evaluation = evaluate(load_pipeline("builtin"), erased, "red", load_prompts("target,related", "red"), ShapesDetector(),
                          seeds=[0, 1], reference=None, progress=False)
    target, related = evaluation.suites["target"], evaluation.suites["related"]
    assert target.detected_base >= 0.8
    return target, related


@pytest.mark.slow
def test_esd_x_erases_red_and_keeps_other_colours():
    target, related = _erase_red("esd-x")
    assert target.detected <= 0.1, target
    assert related.alignment["colour"] >= related.alignment_base["colour"] - 0.1, related


@pytest.mark.slow
def test_abo_reduces_red():
    # With its defaults AbO removes red from 44% of these images on the shipped model (100% -> 56%);
    # this test holds what it does reach.
    target, _ = _erase_red("abo")
    assert target.detected <= target.detected_base - 0.3, target
