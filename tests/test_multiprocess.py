"""More than one process: ``accelerate launch --multi_gpu --num_processes 2`` on CPUs (gloo) of ``mmalign train`` ends with
the same LoRA as one process with the same global batch, and each process encodes only its cache shards;
``mmalign score`` under two processes writes the same scores in the same order as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from test_trainer_adapter import write_pairs


def launcher(processes: int) -> list[str]:
    # accelerate's torchrun launcher (its flag is --multi_gpu); on a machine without CUDA the trainer's
    # Accelerator(cpu=True) joins a gloo group. (`--cpu --num_processes N` runs one process: accelerate
    # launches several CPU processes only through mpirun.)
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def train(tmp: Path, model: Path, data: Path, out: str, processes: int, batch: int, recipe: str = "synth-diffusion-dpo",
          settings: tuple[str, ...] = ("data.shard_size=4",)) -> Path:
    cmd = [*launcher(processes), "-m", "mmalign.cli", "train", recipe, "--quiet",
           *(f"--set={kv}" for kv in (f"generator={model}", f"data.path={data}", f"data.cache_dir={tmp / out / 'cache'}",
                                       "max_steps=3", f"batch_size={batch}", "lr=1e-3",
                                       # Adam's first steps move by ≈ lr·sign(g): with eps = 1e-8 an element whose
                                       # gradient is ~1e-9 turns float summation-order noise into a full lr step
                                       "optimizer.eps=1e-4", *settings,
                                       "eval.every=0", "checkpoint_every=0", "device=cpu", f"output_dir={tmp / out}"))]
    run(cmd, tmp)
    return tmp / out


def same_lora(one: Path, two: Path) -> None:
    a = load_file(str(one / "final" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(two / "final" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k or "lora.up" in k)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    from mmalign.generators.tiny import save_tiny

    model = save_tiny("sdxl", tmp_path / "tiny-sdxl")
    data = write_pairs(tmp_path / "data", n=8, size=32)  # 16 images: 4 cache shards of 4
    one = train(tmp_path, model, data, "one", processes=1, batch=4)
    two = train(tmp_path, model, data, "two", processes=2, batch=2)
    same_lora(one, two)
    # each process encoded only its shards: i ≡ rank (mod 2)
    shards = sorted((two / "cache").glob("*/media-*.safetensors"))
    ranks = []
    for path in shards:
        with safe_open(str(path), framework="pt") as f:
            ranks.append(f.metadata()["rank"])
    assert ranks == ["0", "1", "0", "1"]


def test_reward_backpropagation_under_two_processes_trains_like_one(tmp_path):
    """method: draft samples through the pipeline (the bare denoiser, not the DDP wrapper): the trainer averages
    the gradients itself, so 2 processes × 2 prompts end where 1 process × 4 prompts does."""
    from mmalign.generators.tiny import save_tiny

    model = save_tiny("sdxl", tmp_path / "tiny-sdxl")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle above a red square\na yellow circle\n")
    settings = ("reward.grad_steps=1",)
    one = train(tmp_path, model, prompts, "one", processes=1, batch=4, recipe="synth-draft", settings=settings)
    two = train(tmp_path, model, prompts, "two", processes=2, batch=2, recipe="synth-draft", settings=settings)
    same_lora(one, two)


def test_score_under_two_processes_equals_one(tmp_path):
    from mmalign.media import ImageBatch, save_media

    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "photos"
    for i, (h, w) in enumerate([(32, 32), (40, 24), (24, 48), (32, 40), (56, 32)]):  # mixed sizes, 5 files
        save_media(ImageBatch(torch.rand(1, 3, h, w, generator=g)), folder, names=[f"{i:02d}.png"])
    (folder / "manifest.jsonl").write_text("".join(
        json.dumps({"file": f"{i:02d}.png", "prompt": p}) + "\n"
        for i, p in enumerate(["a red circle", "two blue squares", "a green triangle", "a red square", "a blue circle"])))
    outs = {}
    for n in (1, 2):
        run([*launcher(n), "-m", "mmalign.cli", "score", "--scorer", "synth-hps", "--media", str(folder),
             "--out", str(tmp_path / f"{n}.jsonl"), "--device", "cpu", "--quiet"], tmp_path)
        outs[n] = [json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
    assert [r["file"] for r in outs[2]] == [r["file"] for r in outs[1]] == [f"{i:02d}.png" for i in range(5)]
    for a, b in zip(outs[1], outs[2]):
        assert a["prompt"] == b["prompt"] and abs(a["score"] - b["score"]) < 1e-6


def test_pairs_under_two_processes_equal_one(tmp_path):
    """``mmalign pairs``: each process samples and scores a contiguous share of the prompts with the noise
    of a one-process run; the gathered manifests equal one process's, and every media file too up to one
    8-bit level (a batch of another size sums in another float order, which can flip a rounding)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle\n")  # 3 prompts: shares of 2 and 1
    for n in (1, 2):
        run([*launcher(n), "-m", "mmalign.cli", "pairs", "--generator", "synth-sdxl", "--scorer", "synth-hps",
             "--prompts", str(prompts), "--k", "2", "--steps", "2", "--seed", "3", "--out", str(tmp_path / f"p{n}"),
             "--quiet"], tmp_path)
    pairs = [[json.loads(line) for line in (tmp_path / d / "pairs.jsonl").read_text().splitlines()] for d in ("p1", "p2")]
    margins = [torch.tensor([p.pop("margin") for p in rows]) for rows in pairs]  # reward gaps: float order only
    assert pairs[1] == pairs[0]
    torch.testing.assert_close(margins[1], margins[0], rtol=0, atol=1e-5)
    one, two = ([json.loads(line) for line in (tmp_path / d / "rankings.jsonl").read_text().splitlines()] for d in ("p1", "p2"))
    assert [(r["prompt"], r["items"], r["scores"]) for r in two] == [(r["prompt"], r["items"], r["scores"]) for r in one]
    for a, b in zip(one, two):  # the same images scored in batches of another size: float summation order only
        torch.testing.assert_close(torch.tensor(b["raw"]["synth-hps"]), torch.tensor(a["raw"]["synth-hps"]), rtol=0, atol=1e-5)
    files = sorted(p.name for p in (tmp_path / "p1" / "media").iterdir())
    assert len(files) == 6 and files == sorted(p.name for p in (tmp_path / "p2" / "media").iterdir())
    for f in files:
        a, b = (np.asarray(Image.open(tmp_path / d / "media" / f), dtype=np.int16) for d in ("p1", "p2"))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01, f
    assert json.loads((tmp_path / "p2" / "meta.json").read_text())["processes"] == 2
