"""The shipped ``synth-audio`` generator (a trained StableAudioPipeline): loads through the preset,
samples 8 kHz mono 1 s melodies deterministically, and its held-out oracle accuracy matches eval.json."""

from __future__ import annotations

import json

import pytest
import torch

from mmalign.generators import load_generator
from mmalign.media import AudioBatch
from mmalign.paths import asset_path
from mmalign.synth.prompts import sample_prompts
from mmalign.zoo.train_audio import SAMPLE_RATE, majority_baseline

TRAIN_CMD = "python -m mmalign.zoo.train_audio --seed 0"
CHANCE = {"register": 1 / 3, "tempo": 1 / 2, "timbre": 1 / 3}


@pytest.fixture(scope="module")
def folder():
    path = asset_path("models", "synth-audio")
    if not (path / "model_index.json").is_file() or not (path / "eval.json").is_file():
        pytest.fail(f"the shipped synth-audio model is missing ({path}); train it with `{TRAIN_CMD}`")
    return path


@pytest.fixture(scope="module")
def gen(folder):
    return load_generator("synth-audio", device="cpu")


def test_samples_shape_rate_and_determinism(gen):
    assert gen.family == "stable_audio"
    prompts = sample_prompts("audio", 3, seed=1, split="heldout")
    a = gen.sample(prompts, n=1, seed=7, steps=3, progress=False)
    b = gen.sample(prompts, n=1, seed=7, steps=3, progress=False)
    c = gen.sample(prompts, n=1, seed=8, steps=3, progress=False)
    assert isinstance(a, AudioBatch)
    assert a.sample_rate == SAMPLE_RATE == 8000
    assert a.samples.shape == (3, 1, SAMPLE_RATE)
    assert torch.isfinite(a.samples).all() and a.samples.abs().max() <= 1.0
    assert a.samples.abs().mean() > 1e-3, "the model outputs silence"
    assert a.prompts == prompts
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)


def test_recorded_accuracy_is_good_and_imperfect(folder):
    """Each skill clearly (5 points) above both uniform chance and always answering the held-out set's most
    common value, and not every skill perfect (measurably good and measurably imperfect)."""
    rec = json.loads((folder / "eval.json").read_text())
    acc = rec["samples"]
    majority = majority_baseline(sample_prompts("audio", 60, seed=rec["seed"], split="heldout"))
    assert set(CHANCE) <= set(acc)
    for skill, chance in CHANCE.items():
        bar = max(chance, majority[skill])  # always answering the held-out set's most common value
        assert acc[skill] > bar + 0.05, f"{skill}: {acc[skill]:.2f} is not clearly above {bar:.2f}"
    assert min(acc[s] for s in CHANCE) < 1.0, "a perfect model leaves alignment nothing to improve"
    assert rec["rendered"]["register"] == rec["rendered"]["tempo"] == rec["rendered"]["timbre"] == 1.0


@pytest.mark.slow
def test_heldout_accuracy_matches_eval_json(folder):
    from mmalign.zoo.train_audio import evaluate_model

    rec = json.loads((folder / "eval.json").read_text())
    now = evaluate_model(folder, n=60, seed=rec["seed"], progress=False)
    for skill in CHANCE:
        assert abs(now["samples"][skill] - rec["samples"][skill]) <= 0.1, (skill, now["samples"], rec["samples"])
