"""The reward-hacking guard on the synthetic world, on real builds and trainings of the shipped synth-sdxl: the
setting the developers saw go wrong is flagged and the shipped recipe is not; a run that raises synth-hps while
the oracle's faithfulness falls is flagged as reward hacking (about 4 min on 2 cores)."""

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


def test_guard_flags_reward_hacking_when_the_lora_also_adapts_the_convolutions(tmp_path):
    """LoRA on the ResNet convolutions as well as attention, seed 12 of the demo: on the demo's 256 held-out
    prompts and sampling seed, synth-hps rises (+0.016) while the oracle's faithfulness falls (−0.029) and the
    annotators prefer the base (44.6% win-rate): the proxy is being fooled, and the guard says so."""
    gen = load_generator("synth-sdxl")
    prompts = sample_prompts("image", 192, seed=12, split="train")
    data = build_preferences(gen, [load_scorer("synth-hps")], prompts, tmp_path / "data", k=4, seed=12, batch_size=32,
                             progress=False)
    (tmp_path / "eval.txt").write_text("\n".join(sample_prompts("image", 256, seed=14, split="heldout")) + "\n")
    res = train("synth-diffusion-dpo", overrides=[
        f"data.path={data.pairs}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}",
        f"eval.prompts={tmp_path / 'eval.txt'}", "eval.n_prompts=null", "eval.seed=789", "eval.every=200",
        "checkpoint_every=0", "seed=12", "progress=false", "lora.targets=[to_q,to_k,to_v,to_out.0,conv1,conv2]"],
        generator=gen)
    assert [f["kind"] for f in res.flags] == ["hacking"], res.flags
    flag = res.flags[0]
    assert flag["step"] == 200 and flag["proxy"][1] > 0 and flag["judge"][2] < 0
