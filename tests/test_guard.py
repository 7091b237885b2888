"""The reward-hacking guard: paired divergence of proxy and judge vs step 0, flags in the run, stop on request."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmalign.align.config import GuardConfig
from mmalign.align.guard import divergence
from mmalign.align.trainer import train
from test_trainer_adapter import TinyAdapter, base_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _items(rng: np.random.Generator, n: int = 64, score: float = 0.0, judge: float = 0.0, base=None):
    """Per-prompt eval values: the reference's plus a shift and small per-prompt noise."""
    if base is None:
        return {"score": rng.normal(0.3, 0.05, n).tolist(), "judge": (rng.integers(0, 3, n) / 2).tolist()}
    return {"score": (np.array(base["score"]) + score + rng.normal(0, 0.01, n)).tolist(),
            "judge": np.clip(np.array(base["judge"]) + judge + rng.normal(0, 0.05, n), 0, 1).tolist()}


def test_divergence_flags_only_a_proxy_rise_with_a_judge_fall():
    rng = np.random.default_rng(0)
    ref = _items(rng)
    cfg = GuardConfig()
    hacked = divergence(ref, _items(rng, score=0.02, judge=-0.1, base=ref), cfg, step=100)
    assert hacked["flagged"] and hacked["kind"] == "hacking" and hacked["proxy"][1] > 0 and hacked["judge"][2] < 0
    assert "reward hacking at step 100" in hacked["message"]
    for score, judge in ((0.02, 0.1), (0.0, -0.1), (-0.02, -0.1), (0.0, 0.0)):  # aligned, judge-only fall, both fall, noise
        d = divergence(ref, _items(rng, score=score, judge=judge, base=ref), GuardConfig(collapse=None), step=100)
        assert not d["flagged"] and d["kind"] is None and d["message"] == ""
    # a judge that falls far is flagged whatever the proxy does (collapse); a small fall is not
    for score in (0.0, -0.02):
        d = divergence(ref, _items(rng, score=score, judge=-0.2, base=ref), cfg, step=7)
        assert d["kind"] == "collapse" and "collapsed at step 7" in d["message"]
    assert not divergence(ref, _items(rng, score=-0.02, judge=-0.03, base=ref), cfg, step=7)["flagged"]
    # thresholds: a fall smaller than judge_fall does not count
    assert not divergence(ref, _items(rng, score=0.02, judge=-0.1, base=ref), GuardConfig(judge_fall=0.2, collapse=None), step=1)["flagged"]
    # paired: a model identical to the reference has Δ = 0 exactly
    same = divergence(ref, ref, cfg, step=5)
    assert same["proxy"] == (0.0, 0.0, 0.0) and same["judge"] == (0.0, 0.0, 0.0) and not same["flagged"]


def _eval_fn(hack_from: int):
    """An evaluation whose proxy rises and judge falls from step ``hack_from`` on (same prompts every time)."""
    rng = np.random.default_rng(1)
    ref = _items(rng)

    def evaluate(step: int):
        items = ref if step == 0 else _items(np.random.default_rng(step), base=ref,
                                             **({"score": 0.05, "judge": -0.2} if step >= hack_from else {}))
        return {"score": float(np.mean(items["score"])), "judge": float(np.mean(items["judge"])), "items": items}

    return evaluate


def test_trainer_flags_reward_hacking_and_keeps_going_by_default(tmp_path):
    res = train(base_recipe(tmp_path, max_steps=4, eval={"every": 1}, grad_accum=1), adapter=TinyAdapter(),
                eval_fn=_eval_fn(hack_from=3))
    assert res.stopped == "max_steps" and res.steps == 4
    assert [f["step"] for f in res.flags] == [3, 4] and "reward hacking at step 3" in res.flags[0]["message"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    flagged = {r["step"]: r["eval/guard/flagged"] for r in logged if "eval/guard/flagged" in r}
    assert flagged == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
    assert all("eval/items" not in r for r in logged)  # per-prompt values stay out of the log
    assert res.eval_history[0]["step"] == 0 and "items" not in res.eval_history[0]


def test_guard_stop_keeps_the_last_unflagged_weights(tmp_path):
    recipe = base_recipe(tmp_path, max_steps=6, checkpoint_every=1, grad_accum=1,
                         eval={"every": 1, "guard": {"stop": True}})
    res = train(recipe, adapter=TinyAdapter(), eval_fn=_eval_fn(hack_from=3))
    assert res.stopped == "reward_hacking" and res.steps == 3 and len(res.flags) == 1
    kept = load_file(str(tmp_path / "run" / "unflagged.safetensors"))
    step2 = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "weights.safetensors"))
    assert kept.keys() == step2.keys() and all(torch.equal(kept[k], step2[k]) for k in kept)
    # final/ holds the step-2 weights: the same LoRA as a run that ends at step 2
    two = train(base_recipe(tmp_path, max_steps=2, grad_accum=1, output_dir=str(tmp_path / "two")), adapter=TinyAdapter())
    a = load_file(str(res.final_dir / "pytorch_lora_weights.safetensors"))
    b = load_file(str(two.final_dir / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_guard_needs_both_metrics_and_can_be_turned_off(tmp_path):
    only_score = lambda step: {"score": 0.1 * step, "items": {"score": [0.1 * step] * 4}}  # noqa: E731
    res = train(base_recipe(tmp_path, max_steps=2, eval={"every": 1}, grad_accum=1), adapter=TinyAdapter(), eval_fn=only_score)
    assert res.flags == []
    res = train(base_recipe(tmp_path, max_steps=4, eval={"every": 1, "guard": None}, grad_accum=1,
                            output_dir=str(tmp_path / "off")), adapter=TinyAdapter(), eval_fn=_eval_fn(hack_from=3))
    assert res.flags == [] and res.stopped == "max_steps"


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_guard_level_is_validated(level):
    from mmalign.errors import ConfigError

    with pytest.raises((ConfigError, ValueError)):
        GuardConfig(level=level)


def test_lora_init_from_continues_a_trained_lora(tmp_path):
    """``lora.init_from``: a run starts from another run's final LoRA (policy ≠ reference at step 1), the
    reference stays the base model, and a LoRA of another rank is refused by name."""
    first = train(base_recipe(tmp_path, max_steps=2, grad_accum=1), adapter=TinyAdapter())
    lines = lambda run: [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(first.output_dir)[0]["loss"] == pytest.approx(0.693147, abs=1e-6)
    cont = train(base_recipe(tmp_path, max_steps=1, grad_accum=1, output_dir=str(tmp_path / "cont"),
                             lora={"rank": 2, "alpha": 2, "init_from": str(first.final_dir)}), adapter=TinyAdapter())
    assert lines(cont.output_dir)[0]["loss"] != pytest.approx(0.693147, abs=1e-4)  # starts where the first run ended
    from mmalign.errors import ConfigError

    with pytest.raises(ConfigError, match="init_from .* rank"):
        train(base_recipe(tmp_path, max_steps=1, output_dir=str(tmp_path / "bad"),
                          lora={"rank": 4, "alpha": 4, "init_from": str(first.final_dir)}), adapter=TinyAdapter())
