"""The shipped synthetic-world generators: they load through the public preset path, sample
deterministically, and are measurably good and measurably imperfect (oracle accuracy on a fixed
held-out prompt set, compared with the numbers recorded next to the weights)."""

import json

import pytest
import torch

from mmalign.media import ImageBatch, VideoBatch
from mmalign.paths import asset_path

PRESETS = {"synth-sdxl": ImageBatch, "synth-video": VideoBatch}
#: "measurably good": per-skill accuracy bars (uniform chance: color 1/5, shape 1/3, motion 1/4)
GOOD = {"synth-sdxl": {"color": 0.9, "shape": 0.43}, "synth-video": {"color": 0.9, "shape": 0.43, "motion": 0.35}}


def _require(name: str):
    from mmalign.generators import PRESETS, load_generator

    folder = asset_path("models", name)
    assert (folder / "model_index.json").is_file(), f"{folder} is missing: train it with `{PRESETS[name]}`"
    return load_generator(name)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_samples_deterministically(name):
    gen = _require(name)
    prompts = ["a red circle", "a blue square moving left" if name == "synth-video" else "two green triangles"]
    a = gen.sample(prompts, n=1, seed=3, steps=4, progress=False)
    b = gen.sample(prompts, n=1, seed=3, steps=4, progress=False)
    assert isinstance(a, PRESETS[name]) and a.pixels.shape[-2:] == (32, 32)
    assert torch.equal(a.pixels, b.pixels)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_recorded_heldout_accuracy_reproduces(name):
    from mmalign.synth.evaluate import evaluate_generator

    recorded = json.loads((asset_path("models", name) / "eval.json").read_text())
    result = evaluate_generator(_require(name), n=recorded["n"], seed=recorded["seed"], progress=False)
    for skill, acc in recorded["accuracy"].items():
        assert result["accuracy"][skill] == pytest.approx(acc, abs=0.02), skill
    # measurably good and measurably imperfect
    for skill, bar in GOOD[name].items():
        assert result["accuracy"][skill] >= bar, skill
    assert 0.0 < result["faithfulness"] < 1.0
    assert min(result["accuracy"].values()) < 1.0
