"""Training objectives of preference scorers: HPS v2 / PickScore cross-entropy, Social Reward triplet loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def preference_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tie_offset: bool = True) -> torch.Tensor:
    """Cross-entropy over one prompt's images with soft labels (HPS v2 / PickScore).

    ``logits`` ``[G, K]`` = logit_scale·cos for the K images of each of G prompts; ``target``
    ``[G, K]`` rows sum to 1 (a pair: (1, 0), (0, 1) or (0.5, 0.5) for a tie). With
    ``tie_offset`` the entropy of the target is subtracted (PickScore adds log 0.5 for ties), so a
    perfect prediction has loss 0 for ties too. Mean over prompts, in fp32.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    loss = -(target.float() * logp).sum(-1)
    if tie_offset:
        loss = loss + (target.float() * torch.log(target.float().clamp(min=1e-12))).sum(-1)
    return loss.mean()


def social_reward_triplet_loss(text: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Social Reward ``TripletLoss`` (Picsart-AI-Research/Social-Reward@31ccd0e): mean(relu(d(t, pos) −
    d(t, neg) + margin)), d = squared Euclidean distance of L2-normalised features (= 2 − 2·cos),
    prompt embedding as anchor."""
    t, p, n = (F.normalize(x.float(), dim=-1) for x in (text, pos, neg))
    d_pos = (t - p).pow(2).sum(-1)
    d_neg = (t - n).pow(2).sum(-1)
    return torch.relu(d_pos - d_neg + margin).mean()


def pair_targets(labels: torch.Tensor) -> torch.Tensor:
    """Pair labels (1 = a wins, 0 = b wins, 0.5 = tie) → soft targets ``[N, 2]``."""
    labels = labels.float().flatten()
    return torch.stack([labels, 1.0 - labels], dim=1)


LN_100 = math.log(100.0)  # HPS v2 clamps logit_scale to [0, ln 100] during training (tgxs002/HPSv2@866735e train.py)
