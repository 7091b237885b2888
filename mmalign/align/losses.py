"""Preference losses for diffusion models, as pure functions of per-sample denoising errors.

Every function takes *errors* (per-sample mean squared errors of the denoiser's prediction against
the training target, see :func:`per_sample_error`) and returns ``(loss, metrics)``: a scalar loss
to minimise and a dict of detached scalar tensors for logging. Losses are computed in (at least)
fp32 whatever the input dtype (Diffusion-DPO's signal is ~1e-4 in MSE, below fp16 resolution).

Conventions:

* ``label`` is P(first ≻ second): 1 = the first item ("chosen", y_w) wins, 0 = the second wins,
  0.5 = a tie. A tie is never silently a win (the official ``train.py`` drops ties; the diffusers
  loader would count them as wins of the first image).
* Implicit accuracy counts a pair as correct when the implicit reward margin has the label's
  sign; a zero margin counts 0.5 (the diffusers convention). Hence at initialisation, where
  policy = reference and every margin is exactly 0, implicit accuracy is **0.5**, not 0 as in the
  official code. Tie-labelled pairs always count 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmalign.errors import ConfigError

Tensor = torch.Tensor
Metrics = dict[str, Tensor]

LOSS_TYPES = ("sigmoid", "hinge", "ipo")
DISCOUNT_RANKS = ("psi", "model")


def _f32(x: Tensor | float) -> Tensor:
    """``x`` as a tensor of at least fp32 precision (fp64 stays fp64)."""
    x = torch.as_tensor(x)
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.is_floating_point() else x.float()


def per_sample_error(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Per-sample squared error ``‖pred − target‖²`` in fp32, reduced over all non-batch dims.

    ``reduction="mean"`` is the official Diffusion-DPO convention (DiffusionDPO ``train.py`` @ 5233e75,
    L1125): a mean over the C·H·W latent elements. ``"sum"`` sums instead; a DPO loss on summed errors
    equals the mean-error loss only with β divided by the element count.
    """
    err = (_f32(pred) - _f32(target)).pow(2).flatten(1)
    if reduction == "mean":
        return err.mean(1)
    if reduction == "sum":
        return err.sum(1)
    raise ConfigError(f"per_sample_error: reduction must be 'mean' or 'sum', got {reduction!r}")


def _implicit_accuracy(margin: Tensor, label: Tensor) -> Tensor:
    """Fraction of pairs whose margin has the label's sign; zero margins and tie labels count 0.5."""
    signed = margin * (2.0 * label - 1.0)
    return ((signed > 0).to(margin.dtype) + 0.5 * (signed == 0).to(margin.dtype)).mean()


def diffusion_dpo_loss(
    model_err_w: Tensor,
    model_err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    beta: float,
    label: Tensor | float | None = None,
    loss_type: str = "sigmoid",
) -> tuple[Tensor, Metrics]:
    """Diffusion-DPO loss (Wallace et al. 2023, arXiv 2311.12908, Eq. 14; official ``train.py`` L1142–1145).

    With per-sample errors ``e`` of the policy (model) and the frozen reference at the *same* noise
    and timestep for both members of a pair (official ``train.py`` L1053–1055)::

        inside = −(β/2) · [(e_w − e_l) − (e_w^ref − e_l^ref)]
        loss   = mean( label·softplus(−inside) + (1 − label)·softplus(inside) )

    For ``label = 1`` this is the official ``−logsigmoid(inside).mean()`` (the paper's T·ω(λ_t) is
    folded into β; β = 5000 with the ½, or the diffusers SD1.5 script's 2500 without it).
    ``label = 0`` swaps the roles of the two items; ``label = 0.5`` (a tie) gives the symmetric
    label-smoothed loss, minimised at a zero margin, so a tie pulls the two errors together instead
    of counting as a win.

    ``loss_type`` follows the diffusers SD1.5 script (``train_diffusion_dpo.py`` L877–887), written in
    terms of ``z = inside·(2·label − 1)``: ``"hinge"`` = relu(1 − z); ``"ipo"`` = (z/(β/2) − 1/β)²,
    i.e. the script's ``(logits − 1/(2·beta_dpo))²`` with its ``args.beta`` bug fixed to β/2.

    Returns ``(loss, metrics)`` with ``implicit_acc`` (module docstring), ``reward_margin`` (mean
    label-signed ``inside``), ``model_diff``, ``ref_diff``, ``model_mse`` and ``ref_mse``.
    """
    model_err_w, model_err_l, ref_err_w, ref_err_l = map(_f32, (model_err_w, model_err_l, ref_err_w, ref_err_l))
    model_diff = model_err_w - model_err_l
    ref_diff = ref_err_w - ref_err_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    label_t = torch.ones_like(inside) if label is None else _f32(label).to(inside).expand_as(inside)
    if loss_type == "sigmoid":
        losses = label_t * F.softplus(-inside) + (1.0 - label_t) * F.softplus(inside)
    elif loss_type in ("hinge", "ipo"):
        z = inside * (2.0 * label_t - 1.0)
        losses = F.relu(1.0 - z) if loss_type == "hinge" else (z / (0.5 * beta) - 1.0 / beta) ** 2
    else:
        raise ConfigError(f"diffusion_dpo_loss: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    loss = losses.mean()
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "implicit_acc": _implicit_accuracy(inside, label_t),
            "reward_margin": (inside * (2.0 * label_t - 1.0)).mean(),
            "model_diff": model_diff.mean(),
            "ref_diff": ref_diff.mean(),
            "model_mse": 0.5 * (model_err_w.mean() + model_err_l.mean()),
            "ref_mse": 0.5 * (ref_err_w.mean() + ref_err_l.mean()),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def ranks_descending(scores: Tensor) -> Tensor:
    """1-based ranks of ``scores`` ``[..., k]`` sorted descending (rank 1 = highest; stable on ties)."""
    order = torch.argsort(scores.detach(), dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, scores.shape[-1] + 1, device=scores.device).expand_as(order))
    return ranks


def lambda_weights(psi: Tensor, ranks: Tensor) -> Tensor:
    """LambdaLoss / LiPO-λ pair weights Δ_ij (LiPO, Liu et al. 2024, arXiv 2402.01878, Eq. 8).

    Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)| with gain G = 2^ψ − 1, discount D(τ) = ln(1 + τ) and
    1-based ranks τ; returned as ``[..., k, k]``, constant (no gradient). The RankDPO gain
    2^ψ_i − 2^ψ_j equals G_i − G_j (the −1 cancels), so RankDPO uses the same weights.
    """
    psi = _f32(psi).detach()
    gain = torch.pow(2.0, psi) - 1.0
    inv_disc = 1.0 / torch.log1p(ranks.to(psi.dtype))
    return (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (inv_disc.unsqueeze(-1) - inv_disc.unsqueeze(-2)).abs()


def _lambda_pairwise(scores: Tensor, psi: Tensor, ranks: Tensor, reduction: str) -> tuple[Tensor, Metrics]:
    """Σ over pairs with ψ_i > ψ_j of Δ_ij·softplus(−(s_i − s_j)), ``scores`` higher = better, ``[B, k]``."""
    scores, psi = _f32(scores), _f32(psi).to(_f32(scores).dtype)
    if scores.ndim != 2 or scores.shape != psi.shape:
        raise ConfigError(f"listwise loss: scores and psi must both be [B, k], got {tuple(scores.shape)} and {tuple(psi.shape)}")
    diff = scores.unsqueeze(-1) - scores.unsqueeze(-2)  # [B, k, k]: s_i − s_j
    valid = (psi.unsqueeze(-1) > psi.unsqueeze(-2)).to(scores.dtype)
    weights = lambda_weights(psi, ranks) * valid
    per_pair = weights * F.softplus(-diff)
    if reduction == "sum":
        loss = per_pair.sum((-1, -2)).mean()
    elif reduction == "mean":
        loss = per_pair.sum() / valid.sum().clamp_min(1.0)
    else:
        raise ConfigError(f"listwise loss: reduction must be 'sum' or 'mean', got {reduction!r}")
    with torch.no_grad():
        n = valid.sum().clamp_min(1.0)
        d = diff.detach()
        acc = (((d > 0).to(d.dtype) + 0.5 * (d == 0).to(d.dtype)) * valid).sum() / n
        metrics = {"loss": loss.detach(), "implicit_acc": acc, "reward_margin": (d * valid).sum() / n}
    return loss, metrics


def rank_dpo_loss(
    scores: Tensor, psi: Tensor, beta: float, discount_ranks: str = "psi", reduction: str = "sum"
) -> tuple[Tensor, Metrics]:
    """RankDPO loss (Karthik et al. 2024, arXiv 2410.18013, Algorithm 2 and Eq. 6).

    ``scores`` ``[B, k]`` are s_i = e_θ(x_i) − e_ref(x_i) (policy minus reference denoising error at
    a shared t and ε; lower is better) and ``psi`` ``[B, k]`` the Syn-Pic win rates in [0, 1]::

        loss = Σ_{ψ_i > ψ_j} Δ_ij · (−log σ(−β·(s_i − s_j)))      (summed per list, mean over lists)

    with Δ_ij from :func:`lambda_weights`. Open point of the reference, as an option
    ``discount_ranks``: ``"psi"`` takes the DCG ranks τ from ψ (the algorithm text), ``"model"`` from
    the current model (items sorted by −s, the Figure 2 caption and LiPO-λ). Tied ψ give no pair.
    β here multiplies s directly; the trainer passes β/2 so that k = 2 matches Diffusion-DPO's
    −(β/2) scale. ``reduction="mean"`` averages over valid pairs instead of summing per list.
    """
    if discount_ranks not in DISCOUNT_RANKS:
        raise ConfigError(f"rank_dpo_loss: discount_ranks must be one of {DISCOUNT_RANKS}, got {discount_ranks!r}")
    logits = -beta * _f32(scores)  # higher = better
    ranks = ranks_descending(_f32(psi) if discount_ranks == "psi" else logits)
    return _lambda_pairwise(logits, psi, ranks, reduction)


def lipo_lambda_loss(scores: Tensor, labels: Tensor, reduction: str = "sum") -> tuple[Tensor, Metrics]:
    """LiPO-λ loss (Liu et al. 2024, arXiv 2402.01878, Eq. 8).

    ``scores`` ``[B, k]`` are the implicit rewards s_i (higher = better); for diffusion models
    s_i = −(β/2)·(e_θ(x_i) − e_ref(x_i)) at a shared t and ε. ``labels`` ψ ``[B, k]`` are graded::

        loss = Σ_{ψ_i > ψ_j} Δ_ij · log(1 + exp(−(s_i − s_j)))

    with Δ_ij from :func:`lambda_weights` and τ the rank of each item under the current (detached)
    model scores. For k = 2 and ψ = (1, 0), Δ = 1/ln 2 − 1/ln 3 and the loss is that constant times
    the DPO loss.
    """
    return _lambda_pairwise(scores, labels, ranks_descending(_f32(scores)), reduction)


def sft_loss(model_err: Tensor) -> tuple[Tensor, Metrics]:
    """Supervised fine-tuning on preferred samples: the plain denoising loss (DDPM, Ho et al. 2020, Eq. 14).

    ``model_err`` are per-sample errors of the chosen items (:func:`per_sample_error`); the loss is
    their mean, in fp32.
    """
    err = _f32(model_err)
    loss = err.mean()
    return loss, {"loss": loss.detach(), "model_mse": loss.detach()}


#: Δ for k = 2, ψ = (1, 0): |2^1 − 2^0| · |1/ln 2 − 1/ln 3|.
LIPO_K2_WEIGHT = 1.0 / math.log(2.0) - 1.0 / math.log(3.0)

__all__ = [
    "per_sample_error",
    "diffusion_dpo_loss",
    "rank_dpo_loss",
    "lipo_lambda_loss",
    "sft_loss",
    "lambda_weights",
    "ranks_descending",
    "LIPO_K2_WEIGHT",
]
