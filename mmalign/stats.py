"""Small statistics used by reports: bootstrap confidence intervals over items."""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_ci(
    values: np.ndarray | list,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the statistic and its percentile bootstrap CI (Efron 1979).

    ``values`` is ``[N]`` or ``[N, ...]``; items (rows) are resampled with replacement, so paired
    measurements (e.g. base and aligned on the same prompt) stay paired.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (n_resamples, len(x)))
    stats = np.array([statistic(x[i]) for i in idx])
    alpha = (1 - level) / 2
    return float(statistic(x)), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
