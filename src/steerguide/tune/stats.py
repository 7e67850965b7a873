"""Confidence intervals of a probe's scores: the bootstrap over its images (prompts × seeds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000


def bootstrap_ci(
    columns: Sequence[Sequence[float]],
    statistic: Callable[..., float] | None = None,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): `statistic` of the column means (default: the first column's mean) and its
    percentile bootstrap interval, resampling the images (rows, shared by every column) with replacement.
    The same seed gives the same interval, so a preset written twice reads the same."""
    data = np.asarray(columns, dtype=np.float64)  # (columns, images)
    statistic = statistic or (lambda *means: means[0])
    estimate = float(statistic(*data.mean(axis=1)))
    n = data.shape[1]
    if n < 2:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(RESAMPLES, n))
    means = data[:, idx].mean(axis=2)  # (columns, resamples)
    values = np.array([statistic(*means[:, r]) for r in range(RESAMPLES)])
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return estimate, float(low), float(high)
