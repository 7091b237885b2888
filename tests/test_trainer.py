"""Trainer tests on a tiny real DiffusionAdapter: logging, caching, methods, resume after kill -9, NaN stop."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmalign.align.trainer import train
from mmalign.errors import CheckpointError, ConfigError
from test_trainer_adapter import TinyAdapter, base_recipe, write_pairs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def _lora(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "pytorch_lora_weights.safetensors"))


def test_train_logs_caches_and_releases_encoders(tmp_path):
    adapter = TinyAdapter()
    res = train(base_recipe(tmp_path), adapter=adapter)
    assert res.steps == 3 and res.stopped == "max_steps"
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    for key in ("loss", "implicit_acc", "reward_margin", "grad_norm", "lr", "model_mse", "ref_mse"):
        assert all(key in l for l in lines)
    assert lines[0]["loss"] == pytest.approx(0.693147, abs=1e-6)  # step 1 sees the reference weights
    assert adapter.text is None and adapter.image is None  # encoders released after caching
    weights = _lora(tmp_path / "run")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B moved off zero
    assert (tmp_path / "run" / "final" / "mmalign_lora.json").exists()
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1
    # a second run on the same data and generator reuses the cache: nothing is encoded again
    again = TinyAdapter()
    train(base_recipe(tmp_path, output_dir=str(tmp_path / "run2"), max_steps=1), adapter=again)
    assert again.encode_calls == 0


def test_unknown_key_fails_before_any_work(tmp_path):
    adapter = TinyAdapter()
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        train(base_recipe(tmp_path, batch_sise=2), adapter=adapter)
    with pytest.raises(ConfigError, match="unknown key 'lora.rnk'; did you mean 'rank'"):
        train(base_recipe(tmp_path), overrides=["lora.rnk=4"], adapter=adapter)
    assert adapter.encode_calls == 0 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["rank_dpo", "lipo", "sft"])
def test_other_methods_train_on_rankings(tmp_path, method):
    from mmalign.media import save_media
    from mmalign.media import ImageBatch

    folder = tmp_path / "data"
    paths = save_media(ImageBatch(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))), folder,
                       names=[f"{i}.png" for i in range(8)])
    recs = [{"prompt": f"p{j}", "items": [p.name for p in paths[4 * j : 4 * j + 4]], "scores": [1.0, 2 / 3, 1 / 3, 0.0]}
            for j in range(2)]
    (folder / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = train(base_recipe(tmp_path, method=method, data={"path": str(folder / "rankings.jsonl")}, max_steps=2,
                            grad_accum=1), adapter=TinyAdapter())
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert res.steps == 2 and torch.isfinite(torch.tensor(first["loss"]))
    if method == "lipo":  # Σ Δ_ij·ln 2 over the 6 ranked pairs at initialisation
        from mmalign.align.losses import lambda_weights, ranks_descending

        psi = torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0]])
        ranked = (psi.unsqueeze(-1) > psi.unsqueeze(-2)).float()  # pairs with ψ_i > ψ_j
        w = lambda_weights(psi, ranks_descending(torch.zeros(1, 4))) * ranked  # all scores tie: ranks 1..4
        assert first["loss"] == pytest.approx(float(w.sum()) * 0.693147, rel=1e-4)


def test_full_finetune_adafactor_and_ties(tmp_path):
    write_pairs(tmp_path / "data", tie_every=2)
    recipe = base_recipe(tmp_path, finetune="full", optimizer={"name": "adafactor"}, lr=1e-8, scale_lr=True,
                         data={"ties": "keep"}, max_steps=1)
    del recipe["lora"]
    res = train(recipe, adapter=TinyAdapter())
    assert (res.final_dir / "denoiser.safetensors").exists()
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(1e-8 * 2 * 2)  # scale_lr: lr × batch × accum × processes
    with pytest.raises(ConfigError, match="lora"):
        train(base_recipe(tmp_path, finetune="full"), adapter=TinyAdapter())  # base_recipe sets lora


def test_resume_guards(tmp_path):
    train(base_recipe(tmp_path, max_steps=1), adapter=TinyAdapter())
    with pytest.raises(ConfigError, match="--resume"):
        train(base_recipe(tmp_path, max_steps=2), adapter=TinyAdapter())
    with pytest.raises(CheckpointError, match="beta"):
        train(base_recipe(tmp_path, max_steps=2, beta=100.0), resume=True, adapter=TinyAdapter())
    res = train(base_recipe(tmp_path, max_steps=2), resume=True, adapter=TinyAdapter())  # max_steps may grow
    assert res.steps == 2


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    train(base_recipe(tmp_path, max_steps=2, checkpoint_every=1), adapter=TinyAdapter())
    ckpt = tmp_path / "run" / "checkpoints"
    before = load_file(str(ckpt / "step-00000002" / "weights.safetensors"))
    poisoned = TinyAdapter()
    real_predict = poisoned.predict
    poisoned.predict = lambda noisy, t, cond: real_predict(noisy, t, cond) * float("nan")
    with pytest.raises(CheckpointError, match="non-finite loss .* step 3.*step-00000002"):
        train(base_recipe(tmp_path, max_steps=4, checkpoint_every=1), resume=True, adapter=poisoned)
    assert (ckpt / "latest").read_text() == "step-00000002"
    after = load_file(str(ckpt / "step-00000002" / "weights.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (ckpt / "step-00000003").exists()


def test_early_stopping_restores_best(tmp_path):
    scores = iter([0.5, 0.6, 0.55, 0.52, 0.51, 0.5])
    res = train(base_recipe(tmp_path, max_steps=10, eval={"every": 1, "early_stopping": {"patience": 2}},
                            grad_accum=1), adapter=TinyAdapter(), eval_fn=lambda step: {"score": next(scores)})
    assert res.stopped == "early_stopping" and res.best_step == 1 and res.steps == 3
    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    final = _lora(tmp_path / "run")
    b_key = next(k for k in best if "lora_B" in k)
    assert torch.equal(best[b_key], final[next(k for k in final if b_key.split("lora_B")[0].split("unet.")[-1] in k and "lora_B" in k)])


def test_kill9_then_resume_matches_uninterrupted_run(tmp_path):
    steps = 6
    ref = base_recipe(tmp_path / "a", max_steps=steps, checkpoint_every=1) if (tmp_path / "a").mkdir() is None else None
    train(ref, adapter=TinyAdapter())
    expected = _lora(tmp_path / "a" / "run")

    (tmp_path / "b").mkdir()
    killed = base_recipe(tmp_path / "b", max_steps=steps, checkpoint_every=1)
    killed["data"]["cache_dir"] = ref["data"]["cache_dir"]  # reuse the encoded data: start fast
    recipe_file = tmp_path / "b" / "recipe.json"
    recipe_file.write_text(json.dumps(killed))
    cmd = [sys.executable, str(HERE / "test_trainer_adapter.py"), str(recipe_file)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    latest = tmp_path / "b" / "run" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0.0, 0.3))  # kill at an arbitrary point after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (tmp_path / "b" / "run" / "final").exists()
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = _lora(tmp_path / "b" / "run")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    steps_logged = [json.loads(l)["step"] for l in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))
