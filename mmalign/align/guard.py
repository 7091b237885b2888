"""A guard against reward hacking: the proxy reward rises while a held-out judge falls.

Optimising a learned reward far enough raises the reward while the quality it stands for peaks and
then falls (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization", Fig. 1: proxy vs gold
reward). The trainer's evaluation samples the same prompts with the same seeds at every step, so each
evaluation is compared with the reference model's (step 0) *per prompt*: paired differences of the
proxy (``eval.scorer``, the reward the data was built with) and of the judge (``eval.judge``, a scorer
training never sees: the oracle in the synthetic world, another model on real data), each with a
bootstrap CI over prompts. The run is flagged when the proxy has significantly risen and the judge
has significantly fallen (``eval.guard``; one-sided at ``(1 + level) / 2``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmalign.align.config import GuardConfig
from mmalign.stats import bootstrap_ci


def divergence(reference: dict[str, list[float]], current: dict[str, list[float]], cfg: GuardConfig, step: int,
               seed: int = 0) -> dict[str, Any]:
    """Compare one evaluation's per-prompt ``score`` and ``judge`` with the reference evaluation's.

    Returns ``{"step", "proxy": (Δ, lo, hi), "judge": (Δ, lo, hi), "flagged", "message"}``; Δ is the mean
    paired change over prompts and (lo, hi) its ``cfg.level`` bootstrap CI.
    """
    out: dict[str, Any] = {"step": step}
    for key, name in (("proxy", "score"), ("judge", "judge")):
        d = np.asarray(current[name], float) - np.asarray(reference[name], float)
        out[key] = bootstrap_ci(d, level=cfg.level, seed=seed + step)
    proxy, judge = out["proxy"], out["judge"]
    out["flagged"] = bool(proxy[1] > cfg.proxy_rise and judge[2] < -cfg.judge_fall)
    out["message"] = (
        f"possible reward hacking at step {step}: the proxy reward rose by {proxy[0]:+.4f} "
        f"[{proxy[1]:+.4f}, {proxy[2]:+.4f}] while the held-out judge fell by {judge[0]:+.4f} "
        f"[{judge[1]:+.4f}, {judge[2]:+.4f}] (paired over the evaluation prompts, vs step 0)"
        if out["flagged"] else "")
    return out


__all__ = ["divergence"]
