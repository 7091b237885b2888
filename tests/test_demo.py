"""The demo's validation prompts: train-split prompts the preference data does not use."""

from __future__ import annotations

from mmalign.demo import validation_prompts
from mmalign.synth.prompts import sample_prompts, split_of


def test_validation_prompts_avoid_training_prompts_and_fill_up_small_grammars():
    train = sample_prompts("image", 192, seed=0, split="train")
    val = validation_prompts("image", 32, 1, train)
    assert len(val) == 32 and not set(val) & set(train)
    assert all(split_of(p) == "train" for p in val)
    assert val == validation_prompts("image", 32, 1, train)  # seeded
    audio_train = sample_prompts("audio", 96, seed=0, split="train")  # uses every audio train prompt
    audio_val = validation_prompts("audio", 24, 1, audio_train)
    assert len(audio_val) == 24 and all(split_of(p) == "train" for p in audio_val)
