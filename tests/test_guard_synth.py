"""The reward-hacking guard on the synthetic world: the setting the developers saw go wrong is flagged, the
shipped recipe is not (a real build + two short trainings of the shipped synth-sdxl; about 2 min on 2 cores)."""

from __future__ import annotations

import os

import pytest

from mmalign.align.trainer import train
from mmalign.data.build import build_preferences
from mmalign.demo import validation_prompts
from mmalign.generators import load_generator
from mmalign.scoring import load_scorer
from mmalign.synth.prompts import sample_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow


def test_guard_flags_top_gap_pairs_at_beta_1000_and_not_the_shipped_recipe(tmp_path):
    gen = load_generator("synth-sdxl")
    prompts = sample_prompts("image", 192, seed=10, split="train")
    data = build_preferences(gen, [load_scorer("synth-hps")], prompts, tmp_path / "data", k=4, seed=10, batch_size=32,
                             progress=False)
    (tmp_path / "val.txt").write_text("\n".join(validation_prompts("image", 32, 11, prompts)) + "\n")

    def run(name: str, *overrides: str):
        return train("synth-diffusion-dpo", overrides=[
            f"data.path={data.pairs}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / name}",
            f"eval.prompts={tmp_path / 'val.txt'}", "eval.n_prompts=null", "max_steps=100", "eval.every=100",
            "checkpoint_every=0", "progress=false", *overrides], generator=gen)

    # the setting: the half of the pairs with the largest synth-hps gap, β = 1000
    hacked = run("top-gap", "data.top_margin=0.5", "beta=1000")
    assert hacked.flags, "the guard did not flag top-gap pairs at β = 1000"
    flag = hacked.flags[0]
    assert flag["judge"][2] < -0.05 and flag["kind"] in ("hacking", "collapse")
    # the shipped recipe on the same data: no flag
    shipped = run("shipped")
    assert not shipped.flags, shipped.flags
