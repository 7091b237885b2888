"""A guard against reward hacking: the proxy reward rises while a held-out judge falls.

Optimising a learned reward far enough raises the reward while the quality it stands for peaks and
then falls (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization", Fig. 1: proxy vs gold
reward). The trainer's evaluation samples the same prompts with the same seeds at every step, so each
evaluation is compared with the reference model's (step 0) *per prompt*: paired differences of the
proxy (``eval.scorer``, the reward the data was built with) and of the judge (``eval.judge``, a scorer
training never sees: the oracle in the synthetic world, another model on real data), each with a
bootstrap CI over prompts. The run is flagged when the proxy has significantly risen and the judge
has significantly fallen (``eval.guard``; one-sided at ``(1 + level) / 2``): reward hacking. It is also
flagged when the judge alone has fallen by more than ``collapse``: the proxy may not see what breaks
(too narrow a pair selection or too small a β pushes the model off its data while the proxy drifts
down too), and the judge is what the user wants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmalign.align.config import GuardConfig
from mmalign.stats import bootstrap_ci


def divergence(reference: dict[str, list[float]], current: dict[str, list[float]], cfg: GuardConfig, step: int,
               seed: int = 0) -> dict[str, Any]:
    """Compare one evaluation's per-prompt ``score`` and ``judge`` with the reference evaluation's.

    Returns ``{"step", "proxy": (Δ, lo, hi), "judge": (Δ, lo, hi), "kind", "flagged", "message"}``; Δ is the
    mean paired change over prompts, (lo, hi) its ``cfg.level`` bootstrap CI, and ``kind`` ``"hacking"``
    (proxy up, judge down), ``"collapse"`` (judge down by more than ``cfg.collapse``) or None.
    """
    out: dict[str, Any] = {"step": step}
    for key, name in (("proxy", "score"), ("judge", "judge")):
        d = np.asarray(current[name], float) - np.asarray(reference[name], float)
        out[key] = bootstrap_ci(d, level=cfg.level, seed=seed + step)
    proxy, judge = out["proxy"], out["judge"]
    change = (f"the proxy reward moved by {proxy[0]:+.4f} [{proxy[1]:+.4f}, {proxy[2]:+.4f}] and the held-out judge by "
              f"{judge[0]:+.4f} [{judge[1]:+.4f}, {judge[2]:+.4f}] (paired over the evaluation prompts, vs step 0)")
    if proxy[1] > cfg.proxy_rise and judge[2] < -cfg.judge_fall:
        out["kind"], out["message"] = "hacking", f"possible reward hacking at step {step}: {change}"
    elif cfg.collapse is not None and judge[2] < -cfg.collapse:
        out["kind"], out["message"] = "collapse", (f"the held-out judge collapsed at step {step}: {change}; lower the "
                                                   "learning rate or raise β, or train on more of the data")
    else:
        out["kind"], out["message"] = None, ""
    out["flagged"] = out["kind"] is not None
    return out


__all__ = ["divergence"]
