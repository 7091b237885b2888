"""How often each scorer agrees with the people's votes, with a bootstrap confidence interval.

Every vote implies pairwise comparisons (:func:`mmalign.arena.ranking.implied_pairs`); a scorer agrees on
a non-tied pair when it scores the people's winner strictly higher (an equal score counts as a
disagreement, the pooled convention of :func:`mmalign.scoring.metrics.pooled_pairwise_accuracy`).
Agreement = Σ agreeing pairs / Σ pairs; its 95% CI is a percentile bootstrap over votes (pairs of one vote
stay together), with each vote contributing ``(agreeing, pairs)`` and the statistic Σ num / Σ den.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmalign.arena.ranking import implied_pairs
from mmalign.arena.store import ArenaError, Vote
from mmalign.media import load_media
from mmalign.stats import bootstrap_ci


def _ratio(x: np.ndarray) -> float:
    return float(x[:, 0].sum() / x[:, 1].sum())


def vote_agreement(votes: Sequence[Vote], scores: dict[int, float]) -> np.ndarray:
    """``[n_votes, 2]``: per vote (pairs where the item ``scores`` order agrees, non-tied pairs); votes whose
    pairs are all ties are left out."""
    rows = []
    for v in votes:
        num = den = 0
        for i, j, outcome in implied_pairs(v.ranks, v.mode):
            if outcome == 0.5:
                continue
            win, lose = (v.items[i], v.items[j]) if outcome == 1.0 else (v.items[j], v.items[i])
            num += scores[win.id] > scores[lose.id]
            den += 1
        if den:
            rows.append((num, den))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def item_scores(scorer: Any, votes: Sequence[Vote], batch_size: int = 32, progress: bool = False) -> dict[int, float]:
    """``scorer``'s score of every item shown in ``votes`` against its prompt, by item id."""
    shown = {it.id: it for v in votes for it in v.items}
    ids = sorted(shown)
    media = [load_media(shown[i].path) for i in ids]
    values = scorer.score(media, [shown[i].prompt for i in ids], batch_size=batch_size, progress=progress)
    return dict(zip(ids, values.double().cpu().tolist()))


def agreement(votes: Sequence[Vote], scorers: dict[str, Any], n_resamples: int = 2000, seed: int = 0,
              progress: bool = False) -> dict[str, dict[str, float]]:
    """Per scorer name: ``agreement``, ``ci_low``, ``ci_high`` (95%), ``pairs`` and ``votes`` counted."""
    if not votes:
        raise ArenaError("no votes yet: agreement needs votes (collect some with `mmalign arena serve`)")
    out = {}
    for name, scorer in scorers.items():
        rows = vote_agreement(votes, item_scores(scorer, votes, progress=progress))
        if not len(rows):
            raise ArenaError("every compared pair in the votes is a tie; agreement needs a preference")
        est, lo, hi = bootstrap_ci(rows, _ratio, n_resamples=n_resamples, seed=seed)
        out[name] = {"agreement": est, "ci_low": lo, "ci_high": hi, "pairs": int(rows[:, 1].sum()), "votes": len(rows)}
    return out


__all__ = ["agreement", "vote_agreement", "item_scores"]
