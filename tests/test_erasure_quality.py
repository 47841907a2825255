"""End to end on the built-in model: the erased concept is gone, the others are not (slow).

A colour and a shape, with each method's defaults (tuned on square: benchmarks/results/shape-erasure-square/results.md).
"""

import pytest

from erasekit import erase, load_pipeline
from erasekit.evaluation.detectors import ShapesDetector
from erasekit.evaluation.evaluate import evaluate
from erasekit.evaluation.prompts import load_prompts


def _erase(method, concept):
    erased = load_pipeline("builtin")
    erase(erased, method=method, concepts=concept, seed=0, progress=False)
    evaluation = evaluate(load_pipeline("builtin"), erased, concept, load_prompts("target,related", concept), ShapesDetector(),
                          seeds=[0, 1], reference=None, progress=False)
    target, related = evaluation.suites["target"], evaluation.suites["related"]
    assert target.detected_base >= 0.8
    return target, related


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, concept, kept, slack",
    [
        ("esd-x", "red", "colour", 0.1),
        ("esd-x", "square", "shape", 0.1),
        ("abo", "red", "colour", 0.1),
        ("abo", "square", "shape", 0.1),
    ],
)
def test_erases_the_concept_and_keeps_the_others(method, concept, kept, slack):
    target, related = _erase(method, concept)
    assert target.detected <= 0.1, target
    assert related.alignment[kept] >= related.alignment_base[kept] - slack, related

