"""End to end on the built-in model: the erased concept is gone, the others are not (slow).

The concept is a colour: the shipped model draws colours reliably but its shapes are still rough
(see the README's score table), so a shape would not measure erasure honestly.
"""

import pytest

from erasekit import erase, load_pipeline
from erasekit.evaluation.shapes import evaluate_erasure


def _erase_red(method, detector):
    erased = load_pipeline("builtin")
    erase(erased, method=method, concepts="red", seed=0, progress=False)
    report, _ = evaluate_erasure(load_pipeline("builtin"), erased, detector, "red", seeds=2, progress=False)
    assert report.target_rate_base >= 0.8
    return report


@pytest.mark.slow
def test_esd_x_erases_red_and_keeps_other_colours(detector):
    report = _erase_red("esd-x", detector)
    assert report.target_rate <= 0.1, report
    assert report.agreement["colour"] >= report.agreement_base["colour"] - 0.1, report


@pytest.mark.slow
def test_abo_reduces_red(detector):
    # With the defaults found so far AbO removes about two thirds of red and costs other colours
    # more than ESD-x does (README); this test holds what it does reach.
    report = _erase_red("abo", detector)
    assert report.target_rate <= report.target_rate_base - 0.5, report
