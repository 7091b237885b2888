"""Keyframe captions for frame scoring (mmalign.scoring.video ``captions``; planner ``synth-keyframes``)."""

from __future__ import annotations

import pytest
import torch
from _scoring_tiny import tiny_hps

from mmalign.errors import ConfigError, InputError
from mmalign.media import ImageBatch, MediaList, VideoBatch
from mmalign.scoring import load_scorer
from mmalign.bench.formulas import temporal_flickering
from mmalign.scoring.video import FRAME_CAPTIONS, frame_change, score_video_frames
from mmalign.synth.keyframes import synth_keyframes, synth_still_shot  # importing it registers synth-keyframes
from mmalign.synth.prompts import sample_prompts
from mmalign.synth.render import render


def test_synth_keyframes_caption_the_old_color_first_and_the_new_color_last():
    caps = synth_keyframes("a red square turning blue", 9)
    assert caps == ["a red square"] * 3 + [None] * 3 + ["a blue square"] * 3
    assert synth_keyframes("a green circle moving left", 4) == ["a green circle"] * 4
    assert synth_keyframes("a static yellow triangle", 2) == ["a yellow triangle"] * 2


def test_captioned_frames_score_against_their_caption_and_uncaptioned_frames_are_left_out():
    scorer = tiny_hps()
    v = torch.rand(2, 9, 3, 32, 32, requires_grad=True)
    prompts = ["a red square turning blue", "a static purple circle"]
    got = score_video_frames(scorer, VideoBatch(v), prompts, captions="synth-keyframes", differentiable=True)
    caps = [synth_keyframes(p, 9) for p in prompts]
    want = []
    for i, c in enumerate(caps):
        keep = [t for t in range(9) if c[t] is not None]
        want.append(scorer.score(ImageBatch(v[i, keep].detach()), [c[t] for t in keep]).mean())
    assert torch.allclose(got.detach(), torch.stack(want), atol=1e-6)
    got.sum().backward()  # a reward: the gradient reaches the captioned frames only
    assert v.grad[0, 3:6].abs().sum() == 0 and v.grad[0, :3].abs().sum() > 0 and v.grad[1].abs().sum() > 0
    # videos of different lengths (a MediaList) score as they do alone; stride picks frames before captions
    short = VideoBatch(v.detach()[1:, :4])
    both = score_video_frames(scorer, MediaList([VideoBatch(v.detach()[:1]), short]), prompts, captions="synth-keyframes", stride=2)
    alone = score_video_frames(scorer, short, prompts[1:], captions="synth-keyframes", stride=2)
    assert torch.allclose(both[1:], alone, atol=1e-6)
    assert torch.allclose(alone, scorer.score(ImageBatch(v.detach()[1, [0, 2]]), ["a purple circle"] * 2).mean()[None], atol=1e-6)


def test_the_still_shot_penalty_is_vbench_flickering_on_static_prompts_only():
    scorer = tiny_hps()
    v = torch.rand(3, 9, 3, 32, 32, requires_grad=True)
    prompts = ["a static purple circle", "a red square moving left", "a red square turning blue"]
    assert [synth_still_shot(p) for p in prompts] == [True, False, False]
    plain = score_video_frames(scorer, VideoBatch(v.detach()), prompts, captions="synth-keyframes")
    got = score_video_frames(scorer, VideoBatch(v), prompts, captions="synth-keyframes", still_weight=2.0, differentiable=True)
    # 1 − MAE is VBench's temporal_flickering on uint8 frames (vbench/temporal_flickering.py), by hand
    u8 = (v.detach()[0] * 255).round().to(torch.uint8)
    by_hand = (255 - (u8[1:].int() - u8[:-1].int()).abs().double().mean()) / 255
    assert abs(1 - float(frame_change(u8[None] / 255.0)) - float(by_hand)) < 1e-6
    assert abs(temporal_flickering(u8) - float(by_hand)) < 1e-12
    assert torch.allclose(got.detach(), plain - torch.tensor([2.0, 0, 0]) * frame_change(v.detach()), atol=1e-6)
    got[0].backward()  # the penalty's gradient moves frames toward their neighbours
    assert v.grad[0].abs().sum() > 0
    assert float(frame_change(v.detach()[:1, :1])) == 0.0  # one frame: nothing changes
    # the card key: a still_weight needs a planner; a card with one scores as the function does
    with pytest.raises(ConfigError, match="video.captions"):
        load_scorer("synth-hps", card_overrides=["video.still_weight=1"])
    card = load_scorer("synth-hps-keyframes", card_overrides=["video.still_weight=2"])
    direct = score_video_frames(card, VideoBatch(v.detach()), prompts, captions="synth-keyframes", still_weight=2.0)
    assert torch.allclose(card.score(VideoBatch(v.detach()), prompts), direct, atol=1e-6)


def test_bad_planners_and_strides_are_clear_errors():
    scorer, v = tiny_hps(), VideoBatch(torch.rand(1, 9, 3, 32, 32))
    with pytest.raises(ConfigError, match="synth-keyframes"):
        score_video_frames(scorer, v, ["a static red circle"], captions="synth-keyframe")
    FRAME_CAPTIONS.register("test-odd-frames")(lambda prompt, n: [prompt if t % 2 else None for t in range(n)])
    with pytest.raises(InputError, match="names no frame"):  # stride 2 keeps the even frames, which it leaves out
        score_video_frames(scorer, v, ["a static red circle"], captions="test-odd-frames", stride=2)
    FRAME_CAPTIONS.register("test-too-few")(lambda prompt, n: [prompt])
    with pytest.raises(InputError, match="one per frame"):
        score_video_frames(scorer, v, ["a static red circle"], captions="test-too-few")


def test_the_keyframe_card_sees_a_color_change_that_synth_hps_cannot():
    """Rendered "a red square turning blue" vs the same scene without the change: synth-hps against the whole
    prompt prefers the change at 12 of 64 prompts; the same weights against keyframe captions at all 64."""
    prompts = [p for p in sample_prompts("video", 400, seed=3, split="train") if " turning " in p][:64]
    changed = render(prompts, seed=1, modality="video", frames=9)
    unchanged = render([p.split(" turning")[0].replace("a ", "a static ", 1) for p in prompts], seed=1, modality="video", frames=9)
    wins = {}
    for name in ("synth-hps-keyframes", "synth-hps"):
        scorer = load_scorer(name)
        wins[name] = float((scorer.score(changed, prompts) > scorer.score(unchanged, prompts)).float().mean())
    assert wins["synth-hps-keyframes"] >= 0.95 and wins["synth-hps"] <= 0.4, wins
