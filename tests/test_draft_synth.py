"""The shipped DRaFT recipes on the synthetic world, real trainings of the shipped models (2–4 min each on 2
cores). Images: on the demo's 256 held-out prompts of seed 10 both synth-hps and the oracle's faithfulness rise.
Audio: synth-clap rises while DPOK's KL anchor keeps the timbre the unanchored run trades away (−18 points at
this seed). Video: synth-video-reward and faithfulness rise and static objects stay put. In all three the
reward-hacking guard, watching the oracle, does not flag the run."""

from __future__ import annotations

import os

import pytest

from mmalign.align.trainer import train
from mmalign.synth.prompts import sample_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow


def _train_at_seed_10(recipe: str, modality: str, tmp_path, n_train: int, n_heldout: int, *extra: str):
    """The shipped ``recipe`` trained as the demo trains it at seed 10, evaluated on the demo's held-out prompts."""
    (tmp_path / "train.txt").write_text("\n".join(sample_prompts(modality, n_train, seed=10, split="train")) + "\n")
    (tmp_path / "heldout.txt").write_text("\n".join(sample_prompts(modality, n_heldout, seed=12, split="heldout")) + "\n")
    result = train(recipe, overrides=[
        f"data.path={tmp_path / 'train.txt'}", f"output_dir={tmp_path / 'run'}", f"eval.prompts={tmp_path / 'heldout.txt'}",
        "eval.n_prompts=null", "eval.seed=787", "checkpoint_every=0", "seed=10", "progress=false", *extra])
    assert not result.flags, result.flags
    return result.eval_history[0], result.eval_history[-1]


def test_the_shipped_draft_recipe_raises_reward_and_faithfulness_on_held_out_prompts(tmp_path):
    start, end = _train_at_seed_10("synth-draft", "image", tmp_path, 192, 256, "eval.every=100")
    assert (start["step"], end["step"]) == (0, 100)
    assert end["score"] > start["score"] + 0.005, (start, end)  # synth-hps (the reward)
    assert end["judge"] > start["judge"] + 0.01, (start, end)  # oracle faithfulness (never trained on)


def test_the_shipped_audio_draft_recipe_raises_the_reward_and_keeps_the_timbre(tmp_path):
    start, end = _train_at_seed_10("synth-audio-draft", "audio", tmp_path, 96, 96)
    assert (start["step"], end["step"]) == (0, 50)
    assert end["score"] > start["score"] + 0.005, (start, end)  # synth-clap (the reward)
    assert end["judge/timbre"] >= start["judge/timbre"] - 0.05, (start, end)  # what the unanchored reward trades away
    assert end["judge"] >= start["judge"] - 0.02, (start, end)


def test_the_shipped_video_draft_recipe_raises_reward_and_faithfulness_and_keeps_objects_still(tmp_path):
    start, end = _train_at_seed_10("synth-video-draft", "video", tmp_path, 96, 96, "eval.every=50")
    assert (start["step"], end["step"]) == (0, 50)
    assert end["score"] > start["score"] + 0.005, (start, end)  # synth-video-reward (the reward)
    assert end["judge"] > start["judge"] + 0.01, (start, end)  # oracle faithfulness (never trained on)
    assert end["judge/static"] >= start["judge/static"], (start, end)  # what a frame reward alone cannot see
