"""Pure-formula parity checks: HPD v2 inversion accuracy, pairwise-accuracy conventions, Pick-a-Pic credit,
CLIP-score conventions, Social Reward triplet loss, UnifiedReward parsing and prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmalign.errors import InputError
from mmalign.scoring import judge
from mmalign.scoring.losses import pair_targets, preference_cross_entropy, social_reward_triplet_loss
from mmalign.scoring.metrics import (clip_score_clamped_mean, clip_score_pyiqa, clip_score_torchmetrics, hpdv2_accuracy,
                                     inversion_score, pickscore_credit, pooled_pairwise_accuracy)


# -- HPD v2 inversion score and pairwise-accuracy conventions ---------------------------------------------
def test_inversion_one_discordant_pair_of_four():
    # ground truth ranks 0<1<2<3; prediction swaps the last two → 1 discordant pair of 6
    assert inversion_score([4.0, 3.0, 1.0, 2.0], [0, 1, 2, 3]) == pytest.approx(1 - 1 / 6)
    # a ground-truth tie is never discordant
    assert inversion_score([1.0, 2.0], [0, 0]) == 1.0


def test_hpdv2_accuracy_is_the_mean_over_prompts_not_pooled():
    preds = [[3, 2, 1], [1, 2]]            # prompt 1 perfect (3 pairs), prompt 2 wrong (1 pair)
    ranks = [[0, 1, 2], [0, 1]]
    assert hpdv2_accuracy(preds, ranks) == pytest.approx(0.5)          # mean of 1.0 and 0.0
    a = torch.tensor([3.0, 3.0, 2.0, 1.0])
    b = torch.tensor([2.0, 1.0, 1.0, 2.0])
    assert pooled_pairwise_accuracy(a, b, torch.ones(4)) == pytest.approx(0.75)  # pooled: 3 of 4


def test_pooled_accuracy_drops_gt_ties_and_counts_predicted_ties_wrong():
    a = torch.tensor([1.0, 1.0, 0.0, 5.0])
    b = torch.tensor([0.0, 1.0, 1.0, 0.0])
    lab = torch.tensor([1.0, 1.0, 0.0, 0.5])
    assert pooled_pairwise_accuracy(a, b, lab) == pytest.approx(2 / 3)
    with pytest.raises(InputError):
        pooled_pairwise_accuracy(a, b, torch.full((4,), 0.5))


# -- Pick-a-Pic --------------------------------------------------------------------------------------------
def test_pickscore_credit_with_ties():
    p = torch.tensor([0.9, 0.9, 0.55, 0.2])
    lab = torch.tensor([1.0, 0.5, 1.0, 1.0])
    assert pickscore_credit(p, lab, threshold=0.0) == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert pickscore_credit(p, lab, threshold=0.2) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)


# -- CLIP score ----------------------------------------------------------------------------------------------
def test_clip_score_conventions():
    cos = torch.tensor([0.30, -0.40])
    assert float(clip_score_torchmetrics(cos)) == pytest.approx(0.0)
    assert float(clip_score_clamped_mean(cos)) == pytest.approx(15.0)
    assert clip_score_pyiqa(cos).tolist() == pytest.approx([0.75, 0.0])


# -- Social Reward -------------------------------------------------------------------------------------------
def _unit_pair(cos: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[1.0, 0.0]]), torch.tensor([[cos, math.sqrt(1 - cos**2)]])


def test_social_reward_triplet_loss():
    t, pos = _unit_pair(0.30)
    _, neg = _unit_pair(0.25)
    assert float(social_reward_triplet_loss(t, pos, neg)) == pytest.approx(0.2, abs=1e-6)
    _, far = _unit_pair(0.15)
    assert float(social_reward_triplet_loss(t, pos, far)) == pytest.approx(0.0, abs=1e-6)  # cos_pos − cos_neg = 0.15


def test_preference_cross_entropy_soft_labels_and_ties():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    t = pair_targets(torch.tensor([1.0, 0.5]))
    expect_win = -torch.log_softmax(logits[0], 0)[0]
    assert float(preference_cross_entropy(logits, t)) == pytest.approx(float(expect_win) / 2, abs=1e-6)  # tie term = 0
    assert float(preference_cross_entropy(logits[1:], t[1:])) == pytest.approx(0.0, abs=1e-6)


# -- UnifiedReward parsing and prompts ---------------------------------------------------------------------
def test_point_scores_are_numbers_and_missing_is_flagged_nan():
    j10, j9 = judge.parse_point_score("…\nFinal Score: 10"), judge.parse_point_score("Final Score: 9")
    assert j10.value > j9.value  # upstream string max(["9", "10"]) == "9"
    assert judge.best_and_worst([j9.value, j10.value]) == (1, 0)
    assert judge.best_and_worst(["9", "10"]) == (1, 0)
    miss = judge.parse_point_score("I cannot judge this image.")
    assert math.isnan(miss.value) and not miss.parsed
    assert judge.parse_point_score("Final Score: 7.5").value == 7.5
    assert judge.parse_point_score("Final Score: 3 … Final Score: 4").value == 4.0  # the last one


def test_upstream_fallbacks_only_when_asked():
    assert judge.parse_point_score("Final Score: 7.5", mode="unifiedreward").value == 7.0
    assert judge.parse_point_score("no score here", mode="unifiedreward").value == 0.0
    assert judge.parse_point_score("Final Score: 4.5", mode="flow_grpo").value == pytest.approx(0.9)
    assert judge.parse_pair_choice("Both images are equally good.", mode="unifiedreward").value == 1.0
    assert judge.parse_pair_choice("Image 2 is better than Image 1.", mode="unifiedreward").value == 0.0
    with pytest.raises(InputError):
        judge.parse_point_score("Final Score: 3", mode="lenient")


def test_pair_choices_strict():
    assert judge.parse_pair_choice("Image 1 is better.").value == 1.0
    assert judge.parse_pair_choice("Image 2 is better than Image 1.").value == 0.0
    assert judge.parse_pair_choice("Both images are equally good.").value == 0.5
    assert judge.parse_pair_choice("Image 1 is better in color, but overall Image 2 is better.").value == 0.0
    garbage = judge.parse_pair_choice("¯\\_(ツ)_/¯")
    assert math.isnan(garbage.value) and not garbage.parsed
    assert judge.parse_pair_choice("Video 2 is better.", media="video").value == 0.0


def test_prompt_building_follows_unifiedreward_templates():
    p = judge.build_pair_prompt("a red circle", "pair_qwen")
    assert p.endswith("Text Caption: [a red circle]")
    assert '"Image 1 is better.", "Image 2 is better." and "Both images are equally good."' in p
    llava = judge.build_pair_prompt("x", "pair_llava")
    assert llava.startswith("<image>\n <image>\n") and "Image 2 is better than Image 1." in llava
    assert "from 1 to 5 after 'Final Score:'" in judge.build_point_prompt("x")
    assert "from 1 to 10" in judge.build_point_prompt("x", "point_1_10")
    assert "generated videos" in judge.build_pair_prompt("x", media="video")


def test_judge_scorer_with_a_deterministic_generate_function():
    from mmalign.media import ImageBatch, VideoBatch

    calls = []

    def generate(text, images):  # a judge that prefers brighter images and scores by brightness
        calls.append((text, len(images)))
        m = [float(np.asarray(im.convert("L")).mean()) for im in images]
        if "two generated" in text:
            return "Image 1 is better." if m[0] > m[-1] else "Image 2 is better."
        return "nothing to say" if m[0] < 10 else f"color (attribute): 1\nFinal Score: {1 + int(m[0] // 64)}"

    j = judge.JudgeScorer(generate, image_size=16)
    x = torch.stack([torch.full((3, 8, 8), v) for v in (0.0, 0.5, 1.0)])
    s = j.score(ImageBatch(x), ["a", "b", "c"])
    assert math.isnan(s[0]) and s[1:].tolist() == [3.0, 4.0]  # brightness 128 → 1 + 2, 255 → 1 + 3
    assert [jj.parsed for jj in j.last_judgments] == [False, True, True]
    p = j.compare(ImageBatch(x[[2, 0]]), ImageBatch(x[[1, 1]]), ["a", "b"], swap=True)
    assert p.tolist() == [1.0, 0.0]
    v = VideoBatch(torch.rand(1, 12, 3, 8, 8))
    j.score(v, ["a"])
    assert calls[-1][1] == 8 and "generated video" in calls[-1][0]  # max_frames frames of one video
    with pytest.raises(InputError, match="no gradient"):
        j.score(ImageBatch(x), ["a", "b", "c"], differentiable=True)
    with pytest.raises(InputError, match="must return a string"):
        judge.JudgeScorer(lambda t, i: 5).score(ImageBatch(x[:1]), ["a"])


def test_load_scorer_judge_with_generate_override():
    from mmalign.scoring import load_scorer

    j = load_scorer("unifiedreward", generate=lambda text, images: "Final Score: 3", device="cpu")
    from mmalign.media import ImageBatch

    assert j.score(ImageBatch(torch.rand(2, 3, 8, 8)), "a").tolist() == [3.0, 3.0]
