"""Parity checks P1, P2, P3 (loss part), P5, P9 and P10 of shared/reference/training.md §9."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmalign.align.losses import (
    LIPO_K2_WEIGHT,
    diffusion_dpo_loss,
    lambda_weights,
    lipo_lambda_loss,
    per_sample_error,
    rank_dpo_loss,
    ranks_descending,
    sft_loss,
)
from mmalign.errors import ConfigError

# (model_diff, ref_diff, inside, loss, dL/d model_diff) — training.md §9 P1, β = 5000
P1 = [
    (0.0, 0.0, 0.0, 0.693147, 1250.0),
    (-1e-4, 0.0, 0.25, 0.575939, 1094.56),
    (1e-4, 0.0, -0.25, 0.825939, 1405.44),
    (-1e-3, 0.0, 2.5, 0.078890, 189.65),
    (-5e-4, 1e-4, 1.5, 0.201413, 456.06),
]


def _dpo_from_diffs(model_diff: float, ref_diff: float, **kw):
    # split each difference into two errors around a realistic MSE of 0.1
    md = torch.tensor([model_diff], dtype=torch.float64, requires_grad=True)
    base = torch.tensor([0.1], dtype=torch.float64)
    loss, metrics = diffusion_dpo_loss(base + md, base, base + ref_diff, base, beta=5000, **kw)
    return md, loss, metrics


@pytest.mark.parametrize("model_diff,ref_diff,inside,expected,grad", P1)
def test_p1_dpo_values_and_gradients(model_diff, ref_diff, inside, expected, grad):
    md, loss, metrics = _dpo_from_diffs(model_diff, ref_diff)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert metrics["reward_margin"].item() == pytest.approx(inside, rel=1e-6, abs=1e-9)
    (g,) = torch.autograd.grad(loss, md)
    assert g.item() == pytest.approx(grad, abs=5e-3)  # the reference quotes 2 decimals


@pytest.mark.parametrize("model_diff,ref_diff,inside,expected,grad", P1)
def test_p2_diffusers_sd15_form_matches(model_diff, ref_diff, inside, expected, grad):
    # diffusers train_diffusion_dpo.py: logits = ref_diff − model_diff; −logsigmoid(beta_dpo·logits), beta_dpo=2500
    logits = torch.tensor(ref_diff - model_diff, dtype=torch.float64)
    diffusers_loss = -F.logsigmoid(2500 * logits)
    _, ours, _ = _dpo_from_diffs(model_diff, ref_diff)
    assert ours.item() == pytest.approx(diffusers_loss.item(), rel=1e-12)
    assert diffusers_loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_p2_hinge_and_ipo():
    _, hinge, _ = _dpo_from_diffs(0.0, 0.0, loss_type="hinge")
    assert hinge.item() == 1.0
    # ipo (bug-fixed): (logits − 1/(2·beta_dpo))² with beta_dpo = β/2 = 2500
    _, ipo, _ = _dpo_from_diffs(-1e-4, 0.0, loss_type="ipo")
    assert ipo.item() == pytest.approx((1e-4 - 1 / 5000) ** 2, rel=1e-9)
    with pytest.raises(ConfigError, match="loss_type"):
        _dpo_from_diffs(0.0, 0.0, loss_type="cpo")


def test_p3_initialisation_ln2_and_accuracy_convention():
    e = torch.rand(6, dtype=torch.float32)
    loss, m = diffusion_dpo_loss(e, e.flip(0), e, e.flip(0), beta=5000)  # policy == reference
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert m["implicit_acc"].item() == 0.5  # zero margins count 0.5 (diffusers convention)
    assert m["reward_margin"].item() == 0.0


def test_label_order_and_ties():
    w, l = torch.tensor([0.10, 0.12]), torch.tensor([0.11, 0.12])
    ref = torch.tensor([0.105, 0.12])
    loss1, m1 = diffusion_dpo_loss(w, l, ref, ref, beta=5000, label=1.0)
    loss0, m0 = diffusion_dpo_loss(l, w, ref, ref, beta=5000, label=0.0)  # same pair, swapped, label 0
    assert loss1.item() == pytest.approx(loss0.item(), rel=1e-6)
    assert m1["implicit_acc"].item() == m0["implicit_acc"].item()
    # a tie is not a win: symmetric loss, minimal at zero margin, accuracy 0.5
    tie, mt = diffusion_dpo_loss(w, l, ref, ref, beta=5000, label=0.5)
    win, _ = diffusion_dpo_loss(w, l, ref, ref, beta=5000, label=1.0)
    lose, _ = diffusion_dpo_loss(w, l, ref, ref, beta=5000, label=0.0)
    assert tie.item() == pytest.approx(0.5 * (win.item() + lose.item()), rel=1e-6)
    assert tie.item() > win.item()
    assert mt["implicit_acc"].item() == 0.5
    x = torch.zeros(1, requires_grad=True)
    t0, _ = diffusion_dpo_loss(x + 0.1, torch.tensor([0.1]), torch.tensor([0.1]), torch.tensor([0.1]), 5000, label=0.5)
    (g,) = torch.autograd.grad(t0, x)
    assert g.abs().item() < 1e-9  # stationary at zero margin


def test_fp16_inputs_computed_in_fp32():
    e = torch.full((2,), 0.1, dtype=torch.float16)
    loss, _ = diffusion_dpo_loss(e, e, e, e, beta=5000)
    assert loss.dtype == torch.float32


def test_p5_reduction_scale():
    g = torch.Generator().manual_seed(0)
    c, h, w = 4, 16, 16
    n = c * h * w
    target = torch.randn(4, c, h, w, generator=g, dtype=torch.float64)
    pol = target + 0.3 * torch.randn(4, c, h, w, generator=g, dtype=torch.float64)
    ref = target + 0.3 * torch.randn(4, c, h, w, generator=g, dtype=torch.float64)
    e_mean, r_mean = per_sample_error(pol, target), per_sample_error(ref, target)
    e_sum, r_sum = per_sample_error(pol, target, "sum"), per_sample_error(ref, target, "sum")
    assert torch.allclose(e_sum, e_mean * n)
    mean_loss, _ = diffusion_dpo_loss(e_mean[:2], e_mean[2:], r_mean[:2], r_mean[2:], beta=5000)
    sum_loss_scaled, _ = diffusion_dpo_loss(e_sum[:2], e_sum[2:], r_sum[:2], r_sum[2:], beta=5000 / n)
    sum_loss_same_beta, _ = diffusion_dpo_loss(e_sum[:2], e_sum[2:], r_sum[:2], r_sum[2:], beta=5000)
    assert sum_loss_scaled.item() == pytest.approx(mean_loss.item(), rel=1e-9)
    assert abs(sum_loss_same_beta.item() - mean_loss.item()) > 1e-3
    assert n == 1024 and 4 * 64 * 64 == 16384 and 4 * 128 * 128 == 65536  # SD1.5 / SDXL element counts


P9_PSI = torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0]], dtype=torch.float64)
P9_S = torch.tensor([[-2e-4, 1e-4, -1e-4, 3e-4]], dtype=torch.float64)


@pytest.mark.parametrize("discount,ranks,expected", [("psi", [1, 2, 3, 4], 0.49983), ("model", [1, 3, 2, 4], 0.42073)])
def test_p9_rankdpo_toy(discount, ranks, expected):
    got_ranks = ranks_descending(P9_PSI if discount == "psi" else -P9_S)
    assert got_ranks.tolist() == [ranks]
    loss, m = rank_dpo_loss(P9_S, P9_PSI, beta=5000, discount_ranks=discount)
    assert loss.item() == pytest.approx(expected, abs=5e-6)
    assert 0.0 <= m["implicit_acc"].item() <= 1.0


def test_p9_example_weights():
    w = lambda_weights(P9_PSI, ranks_descending(P9_PSI))[0]
    assert w[0, 3].item() == pytest.approx(0.8214, abs=5e-5)
    assert w[2, 3].item() == pytest.approx(0.026, abs=5e-4)


def test_rankdpo_ties_in_psi_give_no_pair_and_gradient_flows():
    s = torch.tensor([[1e-4, -1e-4, 0.0]], requires_grad=True)
    loss, _ = rank_dpo_loss(s, torch.tensor([[0.5, 0.5, 0.5]]), beta=5000)
    assert loss.item() == 0.0
    loss, _ = rank_dpo_loss(s, torch.tensor([[1.0, 0.5, 0.0]]), beta=5000)
    loss.backward()
    assert s.grad[0, 0] > 0 and s.grad[0, 2] < 0  # push the best item's error down, the worst's up
    with pytest.raises(ConfigError, match="discount_ranks"):
        rank_dpo_loss(s, torch.tensor([[1.0, 0.5, 0.0]]), beta=5000, discount_ranks="tau")


def test_p10_lipo_reduces_to_dpo_for_k2():
    assert LIPO_K2_WEIGHT == pytest.approx(0.532456, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    beta = 5000.0
    for _ in range(5):
        e = 0.1 + 1e-3 * torch.randn(4, 2, generator=g, dtype=torch.float64)  # policy errors (w, l)
        r = 0.1 + 1e-3 * torch.randn(4, 2, generator=g, dtype=torch.float64)  # reference errors
        dpo, _ = diffusion_dpo_loss(e[:, 0], e[:, 1], r[:, 0], r[:, 1], beta=beta)
        scores = -(beta / 2) * (e - r)
        psi = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(4, 2)
        lipo, _ = lipo_lambda_loss(scores, psi)
        assert lipo.item() == pytest.approx(LIPO_K2_WEIGHT * dpo.item(), rel=1e-9)
        # the RankDPO gain 2^ψi − 2^ψj equals the LiPO gain, so RankDPO (β/2) gives the same
        rank, _ = rank_dpo_loss(e - r, psi, beta=beta / 2, discount_ranks="model")
        assert rank.item() == pytest.approx(lipo.item(), rel=1e-9)


def test_sft_loss():
    loss, m = sft_loss(torch.tensor([0.1, 0.3], dtype=torch.float16))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.2, rel=1e-3)
