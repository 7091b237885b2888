"""The trainer on real tiny families (an SDXL pipeline and an SD3 flow DiT, saved with diffusers' own
classes and loaded through ``load_generator``): each stage alone, and runs that own every random draw."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from mmalign.align.trainer import Trainer, train
from mmalign.generators import load_generator
from test_trainer_adapter import write_pairs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from mmalign.generators.tiny import save_tiny

    root = tmp_path_factory.mktemp("families")
    return {family: save_tiny(family, root / family) for family in ("sdxl", "sd3")}


def _recipe(tmp_path, folder, **over) -> dict:
    data = tmp_path / "data" / "pairs.jsonl"
    if not data.exists():
        write_pairs(tmp_path / "data", n=6, size=32)
    recipe = {"generator": str(folder), "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
              "lr": 1e-3, "batch_size": 2, "max_steps": 3, "lora": {"rank": 2, "alpha": 2}, "seed": 5,
              "output_dir": str(tmp_path / "run"), "progress": False, "device": "cpu"}
    recipe.update(over)
    return recipe


def _final(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "pytorch_lora_weights.safetensors"))


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_same_weights_whether_or_not_the_cache_existed(tmp_path, tiny_folders, family):
    """The run that builds the latent cache ends bit for bit where a run that reads it ends, whatever the
    global RNG holds before either."""
    torch.manual_seed(111)
    builds = train(_recipe(tmp_path, tiny_folders[family], output_dir=str(tmp_path / "a")))
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1
    torch.manual_seed(999)
    torch.rand(17)
    reads = train(_recipe(tmp_path, tiny_folders[family], output_dir=str(tmp_path / "b")))
    a, b = _final(builds.output_dir), _final(reads.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it trained


def test_a_run_leaves_the_global_rng_alone(tmp_path, tiny_folders):
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    train(_recipe(tmp_path, tiny_folders["sdxl"], max_steps=1))
    assert torch.equal(torch.rand(4), expected)


def test_a_changed_encoder_never_reuses_old_latents(tmp_path, tiny_folders):
    """Reshipping the VAE (same folder, other weights) gives a new cache entry, not the old latents."""
    gen = load_generator(tiny_folders["sdxl"])
    train(_recipe(tmp_path, tiny_folders["sdxl"], max_steps=1, output_dir=str(tmp_path / "a")), generator=gen)
    with torch.no_grad():
        next(gen.pipe.vae.parameters()).add_(0.01)
    train(_recipe(tmp_path, tiny_folders["sdxl"], max_steps=1, output_dir=str(tmp_path / "b")), generator=gen)
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2


def test_stages_one_by_one_on_a_flow_dit(tmp_path, tiny_folders):
    """setup → step → evaluate → save → a new Trainer resumes to the same state as running on (with LoRA
    dropout, whose masks come from the global RNG the step seeds)."""
    calls = []
    recipe = _recipe(tmp_path, tiny_folders["sd3"], eval={"every": 1, "early_stopping": {"patience": 1}},
                     lora={"rank": 2, "alpha": 2, "dropout": 0.5})
    trainer = Trainer(recipe, eval_fn=lambda step: calls.append(step) or {"score": 1.0 / (1 + step)})
    trainer.setup()
    assert trainer.adapter.prediction_type == "flow"
    assert set(trainer.params) and all("lora_" in n for n in trainer.params)
    before = {n: p.detach().clone() for n, p in trainer.params.items()}
    metrics = trainer.step()
    assert metrics["step"] == 1 and trainer.state.step == 1 and trainer.state.position == 2
    assert metrics["loss"] == pytest.approx(0.693147, abs=1e-5)  # step 1 sees the reference weights
    assert any(not torch.equal(before[n], p) for n, p in trainer.params.items())
    assert trainer.evaluate() is None and calls == [1] and trainer.state.best_step == 1
    assert trainer.evaluate() == "early_stopping"  # the score fell: patience 1
    trainer.save()
    saved = {n: p.detach().clone() for n, p in trainer.params.items()}
    trainer.step()
    expected = {n: p.detach().clone() for n, p in trainer.params.items()}

    again = Trainer(recipe, eval_fn=lambda step: {"score": 0.0})
    again.setup()
    assert again.resume() is not None and again.state.step == 1 and again.state.position == 2
    assert all(torch.equal(saved[n], p) for n, p in again.params.items())
    torch.manual_seed(12345)  # whatever the global RNG holds
    again.step()
    assert all(torch.equal(expected[n], p) for n, p in again.params.items())


def test_judge_metrics_are_logged_with_the_scorer(tmp_path, tiny_folders):
    """The recipe's judge (a second scorer card) is evaluated beside the reward and logs its details."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    recipe = _recipe(tmp_path, tiny_folders["sdxl"], max_steps=1,
                     eval={"every": 1, "prompts": str(prompts), "judge": "synth-oracle"})
    res = train(recipe)
    evals = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "eval/judge" in l]
    assert [e["step"] for e in evals] == [0, 1]
    assert all(0.0 <= e["eval/judge"] <= 1.0 for e in evals) and "eval/judge/color" in evals[0]
    assert res.eval_history[0]["judge"] == evals[0]["eval/judge"]
