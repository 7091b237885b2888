"""Every shipped recipe validates; the SDXL recipes run 2 steps on the tiny SDXL builder, same code path."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mmalign.align.config import Recipe, load_recipe
from mmalign.align.selma import SelmaRecipe, load_selma_recipe
from mmalign.paths import shipped_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RECIPES = sorted(shipped_dir("recipes").glob("*.yaml"))
EXPECTED = {"sdxl-diffusion-dpo", "sdxl-diffusion-dpo-full", "sdxl-rankdpo", "synth-diffusion-dpo", "synth-rankdpo",
            "synth-video-dpo", "synth-audio-dpo", "synth-draft", "synth-video-draft", "synth-audio-draft"}
SELMA = {"synth-selma", "synth-video-selma", "sdxl-selma"}  # run by `mmalign selma`


def test_all_recipes_shipped_and_valid():
    assert EXPECTED | SELMA <= {p.stem for p in RECIPES}
    for path in RECIPES:
        if path.stem in SELMA:
            assert isinstance(load_selma_recipe(path), SelmaRecipe)
        else:
            assert isinstance(load_recipe(path), Recipe)
    assert isinstance(load_recipe("synth-rankdpo"), Recipe)  # by shipped name


def test_official_full_recipe_values():
    r = load_recipe("sdxl-diffusion-dpo-full")
    assert r.beta == 5000 and r.finetune == "full" and r.optimizer.name == "adafactor" and r.scale_lr
    assert r.batch_size * r.grad_accum == 2048 and r.lr * r.batch_size * r.grad_accum == pytest.approx(2.048e-5)  # P7


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from mmalign.generators.tiny import save_tiny

    return save_tiny("sdxl", tmp_path_factory.mktemp("gen") / "tiny-sdxl")


def _tiny_pickapic(path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    g = torch.Generator().manual_seed(0)

    def png():
        arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    labels = [1.0, 0.0, 0.5, 1.0]
    pq.write_table(pa.table({"jpg_0": [png() for _ in labels], "jpg_1": [png() for _ in labels], "label_0": labels,
                             "caption": ["a red circle", "a blue square", "two green circles", ""]}), path)
    return path


def _run(name, tmp_path, tiny_sdxl, data, extra=()):
    from mmalign.align.trainer import train

    overrides = [f"generator={tiny_sdxl}", f"data.path={data}", "data.resolution=32", f"data.cache_dir={tmp_path / 'c'}",
                 "max_steps=2", "batch_size=2", "grad_accum=1", "mixed_precision=no", "device=cpu",
                 f"output_dir={tmp_path / 'run'}", "progress=false", "checkpoint_every=1", *extra]
    return train(name, overrides=overrides)


@pytest.mark.parametrize("name,extra", [
    ("sdxl-diffusion-dpo", ["optimizer.name=adamw"]),  # bitsandbytes' AdamW8bit needs CUDA
    ("sdxl-diffusion-dpo-full", ["grad_accum=2"]),
])
def test_sdxl_dpo_recipes_run_on_tiny_sdxl(tmp_path, tiny_sdxl, name, extra):
    res = _run(name, tmp_path, tiny_sdxl, _tiny_pickapic(tmp_path / "p.parquet"), extra)
    assert res.steps == 2
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == pytest.approx(0.693147, abs=1e-5) and all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)
    assert (res.final_dir / ("pytorch_lora_weights.safetensors" if "full" not in name else "model_index.json")).exists()


def test_sdxl_rankdpo_recipe_runs_on_tiny_sdxl(tmp_path, tiny_sdxl):
    from mmalign.media import ImageBatch, save_media

    folder = tmp_path / "synpic"
    paths = save_media(ImageBatch(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))), folder / "media")
    recs = [{"prompt": p, "items": [str(x.relative_to(folder)) for x in paths[4 * i : 4 * i + 4]],
             "scores": [0.0, 1.0, 2 / 3, 1 / 3]} for i, p in enumerate(["a red circle", "a blue square"])]
    (folder / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = _run("sdxl-rankdpo", tmp_path, tiny_sdxl, folder / "rankings.jsonl", ["optimizer.name=adamw"])
    assert res.steps == 2
