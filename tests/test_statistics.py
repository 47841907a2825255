"""The interval the preservation experiments (benchmarks/preservation_precision.py) read their few-point bar against."""

import numpy as np
import pytest

from erasekit.evaluation.statistics import points_below_interval


def test_an_erasure_that_loses_every_image_reads_100_points_exactly():
    low, high = points_below_interval(np.ones((3, 50), dtype=np.int8))
    assert low == high == 100.0


def test_one_seed_matches_the_binomial_interval():
    """With one training seed only the images are resampled: about p ± 1.96 sqrt(p (1 - p) / n)."""
    n, k = 360, 18
    lost = np.zeros((1, n), dtype=np.int8)
    lost[0, :k] = 1
    p = k / n
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    low, high = points_below_interval(lost)
    assert low == pytest.approx(100 * (p - half), abs=0.5)
    assert high == pytest.approx(100 * (p + half), abs=0.5)


def test_images_the_erasure_fixed_count_against_the_loss():
    lost = np.zeros((1, 100), dtype=np.int8)
    lost[0, :10] = 1
    lost[0, 10:20] = -1
    low, high = points_below_interval(lost)
    assert low < 0 < high


def test_spread_between_training_seeds_widens_the_interval():
    n = 360
    same = np.zeros((4, n), dtype=np.int8)
    same[:, :18] = 1  # every seed loses the same 5%
    spread = np.zeros((4, n), dtype=np.int8)
    for s, k in enumerate((0, 9, 27, 36)):  # the same mean, 5%, spread over seeds
        spread[s, :k] = 1
    low_same, high_same = points_below_interval(same)
    low_spread, high_spread = points_below_interval(spread)
    assert high_spread - low_spread > 1.5 * (high_same - low_same)
    assert low_spread < 5 < high_spread


def test_deterministic_given_its_seed():
    lost = (np.random.default_rng(1).random((3, 200)) < 0.05).astype(np.int8)
    assert points_below_interval(lost) == points_below_interval(lost)
    assert points_below_interval(lost, seed=1) != points_below_interval(lost)
