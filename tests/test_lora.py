"""LoRAs as files: what a training run exports, what diffusers loads from it, and what ``load_generator(...,
lora=...)`` and ``mmalign sample --lora`` do with it — each checked against diffusers' own loader
(``StableDiffusionXLPipeline.load_lora_weights`` / ``set_adapters``) and against weights merged by hand
from the raw file (W + Σ_i w_i·(α_i/r_i)·B_i·A_i, Hu et al. 2021 eq. 3), on a tiny SDXL folder saved with
diffusers' own classes. Then every bad input: one error that names the file.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmalign.errors import ConfigError, InputError
from mmalign.generators import load_generator
from mmalign.generators.lora import (LORA_CONFIG, LORA_FILE, PEFT_CONFIG, PEFT_FILE, LoraLayer, LoraSpec, LoraState,
                                     parse_lora_arg, read_lora, write_lora)
from test_trainer_adapter import write_pairs

# tolerance of fp32 UNet outputs computed along two paths (peft layers vs weights merged by hand): a few ulps
# of activations of order 1, accumulated over the tiny UNet's layers
MERGED_ATOL = 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from mmalign.generators.tiny import save_tiny

    return save_tiny("sdxl", tmp_path_factory.mktemp("lora") / "tiny-sdxl")


@pytest.fixture(scope="module")
def final(base, tmp_path_factory) -> Path:
    """``final/`` of a 2-step Diffusion-DPO LoRA run on ``base`` (lr high enough that 2 steps show in 8-bit PNGs)."""
    from mmalign.align.trainer import train

    tmp = tmp_path_factory.mktemp("run")
    data = write_pairs(tmp / "data", n=4, size=32)
    res = train({"generator": str(base), "data": {"path": str(data), "cache_dir": str(tmp / "cache")}, "lr": 0.05,
                 "batch_size": 2, "max_steps": 2, "lora": {"rank": 4, "alpha": 8}, "seed": 3,
                 "output_dir": str(tmp / "run"), "progress": False, "device": "cpu"})
    return res.final_dir


def unet_inputs(unet) -> dict:
    """One seeded input of the tiny UNet (latents, timestep, text and SDXL micro-conditioning)."""
    g, c = torch.Generator().manual_seed(0), unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return {"sample": torch.randn(2, 4, 16, 16, generator=g),
            "timestep": torch.tensor([10, 700]),
            "encoder_hidden_states": torch.randn(2, 77, c.cross_attention_dim, generator=g),
            "added_cond_kwargs": {"text_embeds": torch.randn(2, pooled, generator=g),
                                  "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}}


def unet_out(unet) -> torch.Tensor:
    with torch.no_grad():
        return unet(**unet_inputs(unet)).sample


def diffusers_pipe(base: Path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def raw_layers(file: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """(A, B, α/r) per UNet module, read from the file with safetensors and json only (not our reader)."""
    with safe_open(str(file), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    sd = load_file(str(file))
    out = {}
    for key in sd:
        if key.startswith("unet.") and key.endswith(".lora_A.weight"):
            module = key[len("unet."):-len(".lora_A.weight")]
            a, b = sd[key], sd[f"unet.{module}.lora_B.weight"]
            out[module] = (a, b, meta["unet.lora_alpha"] / meta["unet.r"])
    return out


def merged_unet(base: Path, loras: list[tuple[Path, float]]):
    """The base UNet with W ← W + Σ w·(α/r)·B·A, computed by hand from the raw files."""
    unet = diffusers_pipe(base).unet
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for file, weight in loras:
            for module, (a, b, scale) in raw_layers(file).items():
                modules[module].weight += weight * scale * (b @ a)
    return unet


class Warnings(logging.Handler):
    """Collects what diffusers logs (its loggers do not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# --- export: diffusers opens final/ ------------------------------------------------------------------


def test_final_holds_diffusers_lora_and_diffusers_attaches_it(base, final):
    assert {p.name for p in final.iterdir()} == {LORA_FILE, LORA_CONFIG, "recipe.yaml"}
    card = json.loads((final / LORA_CONFIG).read_text())
    assert (card["format"], card["family"], card["prefix"], card["rank"], card["alpha"]) == ("diffusers", "sdxl", "unet", 4, 8.0)
    assert card["targets"] == ["to_k", "to_out.0", "to_q", "to_v"] and card["provenance"]["method"] == "diffusion_dpo"

    pipe = diffusers_pipe(base)
    before = unet_out(pipe.unet)
    logger, seen = logging.getLogger("diffusers"), Warnings()
    logger.addHandler(seen)
    try:
        pipe.load_lora_weights(final)  # no extra argument
    finally:
        logger.removeHandler(seen)
    assert not [m for m in seen.messages if "UNet2DConditionModel" in m], seen.messages
    seen.messages.clear()
    after = unet_out(pipe.unet)
    assert (after - before).abs().max() > 1e-3  # the trained LoRA changes the UNet
    logger.addHandler(seen)
    try:
        ours = unet_out(load_generator(base, lora=final).denoiser)
    finally:
        logger.removeHandler(seen)
    assert torch.equal(ours, after)
    assert not [m for m in seen.messages if "No LoRA keys" in m], seen.messages  # text-encoder noise dropped
    # and both are the base UNet with ΔW = (α/r)·B·A added by hand: α/r restored from the file's metadata
    torch.testing.assert_close(after, unet_out(merged_unet(base, [(final / LORA_FILE, 1.0)])), atol=MERGED_ATOL, rtol=0)


def test_sample_cli_with_lora_differs_from_base_and_equals_diffusers(base, final, tmp_path):
    from mmalign.generators._common import item_seeds
    from mmalign.media import load_media, save_media, ImageBatch

    def sample(*extra: str) -> np.ndarray:
        out = tmp_path / f"s{len(extra)}"
        proc = subprocess.run([sys.executable, "-m", "mmalign.cli", "sample", "--generator", str(base), *extra,
                               "--prompts", "a red circle", "--prompts", "two blue squares", "--n", "2", "--seed", "0",
                               "--out", str(out), "--quiet"], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return np.stack([np.asarray(load_media(out / f"{i:05d}.png").pixels) for i in range(4)])

    with_lora, plain = sample("--lora", str(final)), sample()
    assert not np.array_equal(with_lora, plain)

    pipe = diffusers_pipe(base)
    pipe.load_lora_weights(final)
    prompts = ["a red circle", "a red circle", "two blue squares", "two blue squares"]
    gens = [torch.Generator().manual_seed(s) for s in item_seeds(0, 4)]
    images = pipe(prompts, num_inference_steps=2, guidance_scale=3.0, generator=gens, output_type="pt", height=32,
                  width=32).images
    paths = save_media(ImageBatch(images.float().clamp(0, 1)), tmp_path / "diffusers", names=[f"{i}" for i in range(4)])
    expected = np.stack([np.asarray(load_media(p).pixels) for p in paths])
    assert np.array_equal(with_lora, expected)


def test_two_loras_with_weights_equal_diffusers_set_adapters(base, final, tmp_path):
    other = write_lora(tmp_path / "other", random_lora(base, rank=2, alpha=3.0, seed=1))
    ours = unet_out(load_generator(base, lora=[(final, 0.7), LoraSpec(str(other / LORA_FILE), 0.4)]).denoiser)
    pipe = diffusers_pipe(base)
    pipe.load_lora_weights(final, adapter_name="a")
    pipe.load_lora_weights(other, adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.7, 0.4])
    assert torch.equal(ours, unet_out(pipe.unet))
    by_hand = merged_unet(base, [(final / LORA_FILE, 0.7), (other / LORA_FILE, 0.4)])
    torch.testing.assert_close(ours, unet_out(by_hand), atol=MERGED_ATOL, rtol=0)


def test_full_finetune_final_is_a_pipeline_folder(base, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from mmalign.align.trainer import train

    data = write_pairs(tmp_path / "data", n=2, size=32)
    res = train({"generator": str(base), "data": {"path": str(data), "cache_dir": str(tmp_path / "cache")},
                 "finetune": "full", "lr": 1e-3, "batch_size": 2, "max_steps": 1, "output_dir": str(tmp_path / "run"),
                 "progress": False, "device": "cpu"})
    assert (res.final_dir / "model_index.json").is_file() and (res.final_dir / "mmalign_generator.json").is_file()
    trained = unet_out(StableDiffusionXLPipeline.from_pretrained(res.final_dir).unet)
    assert torch.equal(unet_out(load_generator(res.final_dir).denoiser), trained)
    assert not torch.equal(trained, unet_out(diffusers_pipe(base).unet))


# --- the file format -----------------------------------------------------------------------------------------


def random_lora(base: Path, rank: int, alpha: float, seed: int, family: str | None = "sdxl",
                ranks: dict[str, int] | None = None) -> LoraState:
    """A LoRA on every attention projection of ``base``'s UNet, with random A and B (``ranks``: per-module ranks)."""
    unet = diffusers_pipe(base).unet
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v", "attn1.to_out.0")):
            r = (ranks or {}).get(name, rank)
            layers[name] = LoraLayer(torch.randn(r, module.in_features, generator=g) * 0.3,
                                     torch.randn(module.out_features, r, generator=g) * 0.3, alpha)
    return LoraState(layers, family, "unet", "random")


def test_write_read_round_trip_with_per_layer_ranks_and_alphas(base, tmp_path):
    state = random_lora(base, rank=4, alpha=8.0, seed=2)
    odd = sorted(state.layers)[:2]
    state.layers[odd[0]] = LoraLayer(torch.randn(2, state.layers[odd[0]].A.shape[1]), torch.randn(
        state.layers[odd[0]].B.shape[0], 2), 8.0)  # another rank
    state.layers[odd[1]].alpha = 1.5  # another α
    folder = write_lora(tmp_path / "lora", state, {"merge": "test"})
    back = read_lora(folder)
    assert (back.family, back.prefix, back.provenance) == ("sdxl", "unet", {"merge": "test"})
    assert back.layers.keys() == state.layers.keys()
    for k, layer in state.layers.items():
        got = back.layers[k]
        assert torch.equal(got.A, layer.A) and torch.equal(got.B, layer.B) and got.alpha == layer.alpha
    # diffusers gives each layer the same α/r from the file's metadata
    pipe = diffusers_pipe(base)
    pipe.load_lora_weights(folder, adapter_name="x")
    modules = dict(pipe.unet.named_modules())
    assert all(modules[k].scaling["x"] == pytest.approx(layer.scale, rel=1e-12) for k, layer in state.layers.items())
    # the same LoRA as a single file, and the delta of one layer
    assert read_lora(folder / LORA_FILE).layers.keys() == state.layers.keys()
    layer = state.layers[odd[1]]
    torch.testing.assert_close(layer.delta(), 1.5 / 4 * layer.B @ layer.A)


def test_family_without_a_diffusers_loader_keeps_peft_format(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = LoraState({"transformer_blocks.0.attn1.to_q": LoraLayer(torch.randn(2, 8, generator=g),
                                                                     torch.randn(8, 2, generator=g), 4.0)},
                      "stable_audio", "transformer", "x")
    folder = write_lora(tmp_path / "audio-lora", state)
    assert {p.name for p in folder.iterdir()} == {PEFT_FILE, PEFT_CONFIG, LORA_CONFIG}
    back = read_lora(folder)
    layer = back.layers["transformer_blocks.0.attn1.to_q"]
    assert torch.equal(layer.A, state.layers["transformer_blocks.0.attn1.to_q"].A) and layer.alpha == 4.0
    assert (back.family, back.prefix) == ("stable_audio", "transformer")


def test_multi_adapter_without_a_diffusers_loader_uses_peft_scales(tmp_path):
    """Stable Audio's pipeline has no LoRA loader: peft-format LoRAs attach through peft, and each layer computes
    x·(W + Σ_i w_i·(α_i/r_i)·B_i·A_i)ᵀ + b."""
    from mmalign.generators.tiny import save_tiny

    folder = save_tiny("stable_audio", tmp_path / "audio")
    plain = load_generator(folder).denoiser
    modules = dict(plain.named_modules())
    g = torch.Generator().manual_seed(0)
    loras = []
    for i, (rank, alpha, weight) in enumerate([(2, 4.0, 0.5), (3, 1.0, 1.2)]):
        layers = {p: LoraLayer(torch.randn(rank, modules[p].in_features, generator=g),
                               torch.randn(modules[p].out_features, rank, generator=g), alpha)
                  for p in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_v")}
        layers = layers if i == 0 else {k: v for k, v in layers.items() if k.endswith("to_q")}
        loras.append((write_lora(tmp_path / f"l{i}", LoraState(layers, "stable_audio", "transformer", "x")), weight, layers))
    gen = load_generator(folder, lora=[(path, weight) for path, weight, _ in loras])
    attached = dict(gen.denoiser.named_modules())
    for path in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_v"):
        x = torch.randn(3, modules[path].in_features, generator=g)
        w = modules[path].weight.detach().clone()
        for _, weight, layers in loras:
            if path in layers:
                w += weight * layers[path].delta()
        with torch.no_grad():
            torch.testing.assert_close(attached[path](x), torch.nn.functional.linear(x, w, modules[path].bias),
                                       atol=1e-5, rtol=0)


def test_peft_folder_of_earlier_runs_loads(base, tmp_path):
    """``final/`` as runs before diffusers' format wrote it (peft's ``get_peft_model_state_dict`` +
    ``LoraConfig.save_pretrained``) attaches with its α/r: the UNet computes what the peft-injected one did."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = diffusers_pipe(base).unet
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_v"])
    inject_adapter_in_model(config, unet)
    g = torch.Generator().manual_seed(7)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.2
    save_file(get_peft_model_state_dict(unet), str(tmp_path / PEFT_FILE))
    config.save_pretrained(str(tmp_path))
    assert read_lora(tmp_path, family="sdxl").alpha == 6
    torch.testing.assert_close(unet_out(load_generator(base, lora=tmp_path).denoiser), unet_out(unet), atol=0, rtol=0)


def test_kohya_lora_loads_as_diffusers_converts_it(base, tmp_path):
    """A LoRA in kohya's sd-scripts layout (``lora_unet_<path>.lora_down/lora_up/alpha``) reads to the same
    layers, and ``load_generator`` gives the UNet diffusers' own ``load_lora_weights`` gives."""
    state = random_lora(base, rank=4, alpha=2.0, seed=4)
    kohya = {}
    for path, layer in state.layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"] = layer.A, layer.B
        kohya[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    back = read_lora(tmp_path / "kohya.safetensors", family="sdxl")
    assert back.layers.keys() == state.layers.keys()
    assert all(torch.equal(back.layers[k].A, v.A) and back.layers[k].alpha == 2.0 for k, v in state.layers.items())
    pipe = diffusers_pipe(base)
    pipe.load_lora_weights(str(tmp_path / "kohya.safetensors"))
    assert torch.equal(unet_out(load_generator(base, lora=tmp_path / "kohya.safetensors").denoiser), unet_out(pipe.unet))


# --- bad input: one error naming the file, before any sampling --------------------------------------------------


def test_bad_loras_fail_with_one_error_naming_the_file(base, final, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=f"{missing}: no such file"):
        load_generator(base, lora=missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match=f"{garbage}: not a readable safetensors file"):
        load_generator(base, lora=garbage)
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"x")
    with pytest.raises(InputError, match=f"{pickled}: not a .safetensors file"):
        read_lora(pickled)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"{empty}: holds no .safetensors"):
        read_lora(empty)
    with pytest.raises(InputError, match="org/lora.*not in the cache|org/lora.*could not be found"):
        read_lora("org/lora", local_files_only=True)

    # another architecture: an SD3 transformer's LoRA, a UNet LoRA on modules this UNet lacks, other shapes
    sd3 = write_lora(tmp_path / "sd3", LoraState({"transformer_blocks.0.attn.to_q": LoraLayer(
        torch.randn(2, 32), torch.randn(32, 2), 2.0)}, "sd3", "transformer", "x"))
    with pytest.raises(InputError, match=f"{sd3 / LORA_FILE}: holds no LoRA layers for the unet.*another architecture"):
        load_generator(base, lora=sd3)
    state = random_lora(base, rank=2, alpha=2.0, seed=5)
    layer = state.layers.pop(sorted(state.layers)[0])
    state.layers["down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q"] = layer
    elsewhere = write_lora(tmp_path / "elsewhere", state)
    with pytest.raises(ConfigError, match=f"{elsewhere / LORA_FILE}: 1 of its .* layers name modules the "
                                          "UNet2DConditionModel does not have"):
        load_generator(base, lora=elsewhere)
    state = random_lora(base, rank=2, alpha=2.0, seed=5)
    key = sorted(state.layers)[0]
    state.layers[key] = LoraLayer(torch.randn(2, 7), torch.randn(state.layers[key].B.shape[0], 2), 2.0)
    wide = write_lora(tmp_path / "wide", state)
    with pytest.raises(ConfigError, match=f"{wide / LORA_FILE}: layer {key} maps 7 ->"):
        load_generator(base, lora=wide)

    # mismatched ranks: the metadata says r=8, the factors have rank 4
    sd = load_file(str(final / LORA_FILE))
    with safe_open(str(final / LORA_FILE), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    meta["unet.r"] = 8
    save_file(sd, str(tmp_path / "ranks.safetensors"), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    with pytest.raises(ConfigError, match=f"{tmp_path / 'ranks.safetensors'}: layer .* has rank 4 but its config says r=8"):
        read_lora(tmp_path / "ranks.safetensors")

    # a weight that is not a number
    with pytest.raises(InputError, match="LoRA run/final: weight 'abc' is not a number"):
        parse_lora_arg("run/final@abc")
    assert parse_lora_arg("run/final@0.7") == LoraSpec("run/final", 0.7)
    assert parse_lora_arg("run/final") == LoraSpec("run/final", 1.0)
    with pytest.raises(InputError, match="weight 'x' is not a number"):
        load_generator(base, lora=[(final, "x")])


@pytest.mark.parametrize("command", [
    ["sample", "--generator", "synth-sdxl", "--prompts", "a red circle", "--out", "o"],
    ["pairs", "--generator", "synth-sdxl", "--scorer", "synth-hps", "--out", "o"],
    ["bench", "--suite", "synth-image", "--generator", "synth-sdxl", "--out", "o"],
    ["synth", "eval", "--generator", "synth-sdxl", "--out", "o/r.json"],
])
def test_every_generator_command_takes_lora_and_a_bad_weight_is_one_error_line(final, tmp_path, command):
    proc = subprocess.run([sys.executable, "-m", "mmalign.cli", *command, "--lora", f"{final}@heavy"], cwd=tmp_path,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                               "HOME": str(tmp_path)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0] == f"error: LoRA {final}: weight 'heavy' is not a number; write PATH@0.7"
    assert not (tmp_path / "o").exists()  # before any work
