"""Statistics that read a result against its noise."""

from __future__ import annotations

import numpy as np


def points_below_interval(lost: np.ndarray, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval, in points, of the mean of `lost` over training seeds and images.

    lost[s, i] is +1 where training seed s's erasure got image i wrong that the base model drew right, -1 where
    it got right one the base drew wrong, 0 elsewhere: its mean is the points below the base. The images and
    the training seeds are both samples, so each draw resamples both; the images are resampled together
    across seeds, as every seed was evaluated on the same ones. With one training seed the interval is the
    images' alone; resampling only a few seeds understates their spread ((n - 1) / n of its variance).
    """
    rng = np.random.default_rng(seed)
    n_seeds, n_images = lost.shape
    per_seed = lost[:, rng.integers(0, n_images, (draws, n_images))].mean(-1)  # (seed, draw)
    seeds = rng.integers(0, n_seeds, (draws, n_seeds))
    means = np.take_along_axis(per_seed.T, seeds, axis=1).mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return 100 * low, 100 * high
