"""End to end on the built-in model: the erased concept is gone, the others are not (slow)."""

import pytest

from erasekit import erase, load_pipeline
from erasekit.evaluation.shapes import evaluate_erasure


@pytest.mark.slow
@pytest.mark.parametrize("method", ["abo", "esd-x"])
def test_erasing_circle_removes_circles_and_keeps_other_shapes(method, detector):
    erased = load_pipeline("builtin")
    erase(erased, method=method, concepts="circle", seed=0, progress=False)
    report, _ = evaluate_erasure(load_pipeline("builtin"), erased, detector, "circle", seeds=2, progress=False)
    assert report.target_rate_base >= 0.8
    assert report.target_rate <= report.target_rate_base - 0.5, report
    assert report.agreement["shape"] >= report.agreement_base["shape"] - 0.1, report
