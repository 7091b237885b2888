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


def pooled_bootstrap_ci(groups: list[np.ndarray | list], n_resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of the mean over groups of per-group means (e.g. runs at several seeds, each
    with its per-prompt values), by a two-level bootstrap: groups are resampled with replacement, then
    the items within each drawn group (Davison & Hinkley 1997, §3.8, "multi-stage sampling"), so the CI
    holds both the spread between seeds and the noise within each run."""
    xs = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not xs:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        drawn = rng.integers(0, len(xs), len(xs))
        stats[r] = np.mean([xs[g][rng.integers(0, len(xs[g]), len(xs[g]))].mean() for g in drawn])
    alpha = (1 - level) / 2
    return float(np.mean([x.mean() for x in xs])), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
