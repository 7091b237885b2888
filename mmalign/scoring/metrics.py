"""Scorer-accuracy metrics and score conventions, each under its own name (they are not interchangeable).

* :func:`inversion_score` / :func:`hpdv2_accuracy` — HPD v2 (tgxs002/HPSv2@866735e
  ``train.py::inversion_score``): per prompt 1 − discordant/(n(n−1)/2), **mean over prompts**,
  not pooled;
* :func:`pooled_pairwise_accuracy` — ImageReward-test convention: pooled over non-tied ground-truth
  pairs, predicted ties count as wrong;
* :func:`pickscore_credit` — Pick-a-Pic (Kirstain et al. 2023, eval protocol): 1 exact, 0.5 if
  either side is a tie, 0 otherwise;
* CLIP-score aggregations: torchmetrics' ``CLIPScore`` clamps *after* averaging, pyiqa's
  ``clipscore`` is Hessel et al. 2021's w·max(cos, 0) per image.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmalign.errors import InputError


def inversion_score(pred: Sequence[float], gt_rank: Sequence[float]) -> float:
    """1 − (#discordant pairs)/(n(n−1)/2) for one prompt.

    ``pred``: predicted scores (higher = better); ``gt_rank``: ground-truth ranks (lower = better,
    ties allowed: a tied ground-truth pair is never counted as discordant).
    """
    p, g = [float(x) for x in pred], [float(x) for x in gt_rank]
    n = len(p)
    if n != len(g) or n < 2:
        raise InputError(f"inversion_score needs ≥ 2 items and equal lengths, got {n} predictions and {len(g)} ranks")
    bad = sum(1 for i in range(n) for j in range(i + 1, n) if (g[i] - g[j]) * (p[j] - p[i]) < 0)
    return 1.0 - bad / (n * (n - 1) / 2)


def hpdv2_accuracy(preds: Sequence[Sequence[float]], gt_ranks: Sequence[Sequence[float]]) -> float:
    """HPD v2 "ranking_acc": mean over prompts of :func:`inversion_score`."""
    if len(preds) != len(gt_ranks) or not preds:
        raise InputError(f"hpdv2_accuracy: {len(preds)} prediction groups vs {len(gt_ranks)} rank groups")
    return sum(inversion_score(p, g) for p, g in zip(preds, gt_ranks)) / len(preds)


def pooled_pairwise_accuracy(score_a: torch.Tensor, score_b: torch.Tensor, label: torch.Tensor) -> float:
    """ImageReward-test convention: accuracy over pairs whose label is not a tie (label 1 = a wins,
    0 = b wins, 0.5 = tie, dropped); a predicted tie (equal scores) counts as wrong."""
    score_a, score_b, label = (torch.as_tensor(x, dtype=torch.float64).flatten() for x in (score_a, score_b, label))
    keep = label != 0.5
    if not keep.any():
        raise InputError("pooled_pairwise_accuracy: every pair is a ground-truth tie; nothing to score")
    diff, lab = (score_a - score_b)[keep], label[keep]
    correct = ((diff > 0) & (lab == 1)) | ((diff < 0) & (lab == 0))
    return float(correct.double().mean())


def pickscore_credit(p_a: torch.Tensor, label: torch.Tensor, threshold: float = 0.0) -> float:
    """Pick-a-Pic credit: predict a tie if |p_a − p_b| ≤ threshold (p_b = 1 − p_a); 1 for an exact
    match, 0.5 if either side is a tie, 0 otherwise; mean over pairs."""
    p_a, label = torch.as_tensor(p_a, dtype=torch.float64), torch.as_tensor(label, dtype=torch.float64)
    pred = torch.where((2 * p_a - 1).abs() <= threshold, torch.full_like(p_a, 0.5), (p_a > 0.5).double())
    credit = torch.where((pred == 0.5) | (label == 0.5), torch.full_like(p_a, 0.5), (pred == label).double())
    return float(credit.mean())


def clip_score_torchmetrics(cos: torch.Tensor) -> torch.Tensor:
    """torchmetrics ``CLIPScore``: max(mean(100·cos), 0) — clamp **after** averaging."""
    return (100.0 * cos.float()).mean().clamp(min=0.0)


def clip_score_clamped_mean(cos: torch.Tensor) -> torch.Tensor:
    """Clamp per sample, then average: mean(max(100·cos, 0)) (*not* torchmetrics)."""
    return (100.0 * cos.float()).clamp(min=0.0).mean()


def clip_score_pyiqa(cos: torch.Tensor, w: float = 2.5) -> torch.Tensor:
    """pyiqa per image: w·relu(cos) with prefix "A photo depicts" and ViT-B/32 (CLIPScore, Hessel et al. 2021)."""
    return w * torch.relu(cos.float())
