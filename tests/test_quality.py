"""synth-iqa (mmalign.synth.quality), its trainer, simulated quality ratings and shipped combinations (family ``combine``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml

from mmalign.errors import ConfigError
from mmalign.media import ImageBatch, VideoBatch
from mmalign.scoring import load_scorer
from mmalign.synth.annotators import Annotator
from mmalign.synth.oracle import image_quality
from mmalign.synth.prompts import sample_prompts
from mmalign.synth.render import render
from mmalign.zoo.train_quality import correlations, run
from mmalign.zoo.train_scorers import corrupted_renders


def test_quality_ratings_are_the_oracle_quality_seen_through_each_raters_noise():
    x = render(sample_prompts("image", 6, seed=0), seed=0).pixels
    truth = torch.tensor([image_quality(p.numpy())["quality"] for p in x])
    assert torch.allclose(Annotator(noise=0.0).rate_quality(ImageBatch(x)), truth)
    a, b = Annotator(seed=1).rate_quality(ImageBatch(x)), Annotator(seed=1).rate_quality(ImageBatch(x))
    assert torch.equal(a, b) and not torch.allclose(a, truth)
    assert 0.05 < float((a - truth).std()) < 0.3  # σ = 0.15


def test_shipped_synth_iqa_ranks_clean_renders_over_noisy_and_blurred_ones_with_a_gradient():
    scorer = load_scorer("synth-iqa", dtype="fp32")
    prompts = sample_prompts("image", 64, seed=5, split="heldout")
    clean = render(prompts, seed=5).pixels
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(clean, 3, stride=1, padding=1, count_include_pad=False)
    s_clean, s_noisy, s_blur = (scorer.score(ImageBatch(x)) for x in (clean, noisy, blurred))
    assert (s_clean > s_noisy).float().mean() > 0.9 and (s_clean > s_blur).float().mean() > 0.9
    # held-out corrupted renders: the score follows the noise-free quality (the trained model reports SRCC)
    mixed = corrupted_renders(prompts, "image", 7, random.Random(7), prompts)
    truth = Annotator(noise=0.0).rate_quality(mixed)
    assert correlations(scorer.score(mixed), truth)["srcc"] > 0.8
    # videos: the mean of their frames; differentiable for reward backpropagation
    v = torch.stack([clean[:3], noisy[:3]]).requires_grad_(True)
    got = scorer.score(VideoBatch(v), differentiable=True)
    assert torch.allclose(got.detach(), torch.stack([s_clean[:3].mean(), s_noisy[:3].mean()]), atol=1e-5)
    got.sum().backward()
    assert v.grad.abs().sum() > 0


def test_train_quality_writes_a_folder_the_card_loads(tmp_path):
    report = run(tmp_path / "iqa", seed=0, n_video=4, n_image=8, n_render=16, raters=3, steps=5, batch_size=8, log=lambda s: None)
    assert set(report["heldout"]) == {"video frames", "synth-sdxl", "renders"}
    assert report["train_pictures"] == 4 * 9 + 8 + 16
    card = yaml.safe_load(open("scorers/synth-iqa.yaml"))
    card["checkpoint"] = {"source": "local", "path": str(tmp_path / "iqa")}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    assert (tmp_path / "iqa" / "train_report.json").exists()
    assert (tmp_path / "iqa.work" / "iqa_state.pt").exists()  # resumable (mmalign.zoo.stages.TrainStage)
    x = torch.rand(2, 3, 32, 32)
    scorer = load_scorer(tmp_path / "card.yaml", dtype="fp32")
    from mmalign.synth.quality import QualityNet

    assert torch.allclose(scorer.score(ImageBatch(x)), QualityNet.from_pretrained(tmp_path / "iqa")(x), atol=1e-6)


def _combined_card(tmp_path, **config) -> str:
    card = {"name": "mix", "description": "a test combination", "architecture": {"family": "combine", "model": "sum", "config": config},
            "checkpoint": {"source": "none"}, "score": {"formula": "combined", "bt_scale": 5.0}, "modalities": ["image", "video"],
            "license": "test", "paper": "none", "code": "tests"}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(card))
    return str(tmp_path / "mix.yaml")


def test_a_combine_card_is_the_weighted_sum_of_its_members_and_keeps_their_video_options(tmp_path):
    hps, iqa = load_scorer("synth-hps-video", dtype="fp32"), load_scorer("synth-iqa", dtype="fp32")
    prompts = sample_prompts("video", 4, seed=3)
    v = render(prompts, seed=3, modality="video")
    mix = load_scorer(_combined_card(tmp_path, weights={"synth-hps-video": 1.0, "synth-iqa": 0.25}, normalize="none"), dtype="fp32")
    assert mix.name == "mix" and mix.bt_scale == 5.0
    assert torch.allclose(mix.score(v, prompts), hps.score(v, prompts) + 0.25 * iqa.score(v, prompts), atol=1e-5)
    # the video demo's shipped reward: the still-shot penalty of its member card still applies
    shipped = load_scorer("synth-video-reward", dtype="fp32")
    w = yaml.safe_load(open("scorers/synth-video-reward.yaml"))["architecture"]["config"]["weights"]
    assert shipped.weights == {"synth-hps-video": w["synth-hps-video"], "synth-iqa": w["synth-iqa"]}
    assert shipped.scorers["synth-hps-video"].video_still_weight > 0
    x = v.pixels.clone().requires_grad_(True)
    got = shipped.score(VideoBatch(x), prompts, differentiable=True)
    want = w["synth-hps-video"] * hps.score(v, prompts) + w["synth-iqa"] * iqa.score(v, prompts)
    assert torch.allclose(got.detach(), want, atol=1e-5)
    got.sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="member's card"):
        load_scorer(_combined_card(tmp_path, weights={"synth-hps": 1.0}), video_stride=2)
    with pytest.raises(ConfigError, match="weights"):
        load_scorer(_combined_card(tmp_path, scorers=["synth-hps"]))


def test_a_combine_member_card_file_is_found_next_to_the_combining_card(tmp_path, monkeypatch):
    """A relative member path is read from the combining card's folder, whatever the working directory."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "iqa-copy.yaml").write_text(Path("scorers/synth-iqa.yaml").read_text().replace("name: synth-iqa", "name: iqa-copy"))
    mix = _combined_card(cards, weights={"iqa-copy.yaml": 2.0, "synth-hps": 1.0}, normalize="none")
    monkeypatch.chdir(tmp_path)
    scorer = load_scorer(mix, dtype="fp32")
    assert scorer.weights == {"iqa-copy": 2.0, "synth-hps": 1.0}
    with pytest.raises(ConfigError):
        load_scorer(_combined_card(cards, weights={"cards/iqa-copy.yaml": 1.0}), dtype="fp32")
