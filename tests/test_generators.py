"""Generators: tiny models of every family through the real save/load path, seeds, training targets
(reference/training.md §1.5 and parity check P8), attention backends, hub ids and the sample CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmalign.errors import ConfigError, InputError
from mmalign.media import AudioBatch, ImageBatch, VideoBatch

torch.set_num_threads(1)

FAMILIES = ["sd", "sdxl", "sd3", "animatediff", "animatediff_sdxl", "wan", "stable_audio", "musicgen"]
DIFFUSION = [f for f in FAMILIES if f != "musicgen"]
EXPECTED = {  # media type, data shape for 2 prompts x n=2
    "sd": (ImageBatch, (4, 3, 32, 32)), "sdxl": (ImageBatch, (4, 3, 32, 32)), "sd3": (ImageBatch, (4, 3, 32, 32)),
    "animatediff": (VideoBatch, (4, 4, 3, 32, 32)), "animatediff_sdxl": (VideoBatch, (4, 4, 3, 32, 32)), "wan": (VideoBatch, (4, 5, 3, 32, 32)),
    "stable_audio": (AudioBatch, (4, 1, 512)), "musicgen": (AudioBatch, (4, 1, 208))  # steps = 16 token frames, less the delay pattern,
}
PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def gens(tmp_path_factory):
    """family -> generator loaded from a saved tiny folder (built once per module)."""
    from mmalign.generators import load_generator
    from mmalign.generators.tiny import save_tiny

    cache = {}

    def get(family: str, **options):
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            folder = save_tiny(family, tmp_path_factory.mktemp(family), **options)
            cache[key] = load_generator(folder, local_files_only=True)
        return cache[key]

    return get


# --- tokenizer ---------------------------------------------------------------------------------


def test_clip_tokenizer_whole_words_and_character_fallback():
    from mmalign.generators.tiny import clip_tokenizer, t5_tokenizer

    tok = clip_tokenizer()
    assert len(tok) < 1000
    assert tok.tokenize("a red circle left of a blue square") == [
        "a</w>", "red</w>", "circle</w>", "left</w>", "of</w>", "a</w>", "blue</w>", "square</w>"]
    assert tok.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]
    ids = tok("a red circle").input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>") and ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
    t5 = t5_tokenizer()
    assert len(t5) < 1000
    assert t5.tokenize("a fast high melody on a sawtooth synth") == [
        "▁a", "▁fast", "▁high", "▁melody", "▁on", "▁a", "▁sawtooth", "▁synth"]
    assert t5.tokenize("zebra") == ["▁", "z", "e", "b", "r", "a"]


def test_tokenizer_covers_the_synth_grammar():
    from mmalign.generators.make_tokenizer import grammar_words
    from mmalign.generators.tiny import clip_tokenizer, t5_tokenizer

    words = set(grammar_words()) | set(pytest.importorskip("mmalign.synth.prompts").VOCABULARY)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    assert [w for w in sorted(words) if clip.tokenize(w) != [w + "</w>"]] == []
    assert [w for w in sorted(words) if t5.tokenize(w) != ["▁" + w]] == []


# --- every family: build, save, reload, sample --------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_samples_shape_dtype_and_seed(gens, family):
    gen = gens(family)
    cls, shape = EXPECTED[family]
    steps = 16 if family == "musicgen" else 2  # MusicGen: token frames (its first frames are delay-pattern padding)
    media = gen.sample(PROMPTS, n=2, seed=0, steps=steps, progress=False)
    assert isinstance(media, cls) and tuple(media.data.shape) == shape and media.data.dtype == torch.float32
    assert media.prompts == ["a red circle", "a red circle", "two blue squares", "two blue squares"]
    assert [m["index"] for m in media.metadata] == [0, 1, 0, 1]
    again = gen.sample(PROMPTS, n=2, seed=0, steps=steps, progress=False)
    assert torch.equal(media.data, again.data)
    other = gen.sample(PROMPTS[:1], n=1, seed=1, steps=steps, progress=False)
    assert not torch.allclose(other.data[0], media.data[0])
    if family != "musicgen":  # an item's noise does not depend on the batch it is drawn in
        small = gen.sample(PROMPTS, n=2, seed=0, steps=2, progress=False, batch_size=3)
        torch.testing.assert_close(small.data, media.data, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", DIFFUSION)
def test_adapter_shapes_and_roundtrip(gens, family):
    gen = gens(family)
    ad = gen.trainable()
    media = gen.sample(PROMPTS, n=1, seed=0, steps=2, progress=False)
    cond = ad.encode_prompts(PROMPTS)
    assert all(v.shape[0] == 2 for v in cond.values())
    x0 = ad.encode_media(media)
    assert x0.shape[0] == 2
    g = torch.Generator().manual_seed(0)
    t = ad.sample_timesteps(2, generator=g)
    assert ((t >= 0) & (t < ad.num_train_timesteps)).all()
    eps = torch.randn(x0.shape, generator=g)
    xt = ad.noise(x0, eps, t)
    pred = ad.predict(xt, t, cond)
    assert pred.shape == ad.target(x0, eps, t).shape == x0.shape
    assert isinstance(ad.denoiser, torch.nn.Module) and ad.lora_target_modules
    names = {n.rsplit(".", 1)[-1] for n, _ in ad.denoiser.named_modules()}
    assert any(m.split(".")[0] in names for m in ad.lora_target_modules)


def test_musicgen_is_sampling_only(gens):
    with pytest.raises(ConfigError, match="sampling-only"):
        gens("musicgen").trainable()


# --- training targets against hand-computed values ----------------------------------------------


def _x0_eps(shape=(2, 4, 2, 2)):
    g = torch.Generator().manual_seed(3)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_epsilon_target_and_forward_process(gens):
    ad = gens("sd").trainable()
    assert ad.prediction_type == "epsilon"
    x0, eps = _x0_eps()
    t = torch.tensor([10, 700])
    assert torch.equal(ad.target(x0, eps, t), eps)
    # scaled_linear betas by hand: beta_i = (sqrt(b0) + i/(T-1) (sqrt(b1) - sqrt(b0)))^2
    betas = [(math.sqrt(0.00085) + i / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2 for i in range(1000)]
    abar = [math.prod(1 - b for b in betas[: k + 1]) for k in (10, 700)]
    for row, a in enumerate(abar):
        torch.testing.assert_close(ad.noise(x0, eps, t)[row], math.sqrt(a) * x0[row] + math.sqrt(1 - a) * eps[row])


def test_v_prediction_target(gens):
    ad = gens("sd", prediction_type="v_prediction").trainable()
    assert ad.prediction_type == "v_prediction"
    x0, eps = _x0_eps()
    t = torch.tensor([0, 500])
    ab = ad.scheduler.alphas_cumprod
    for row, k in enumerate(t.tolist()):
        a = float(ab[k])
        v = math.sqrt(a) * eps[row] - math.sqrt(1 - a) * x0[row]
        torch.testing.assert_close(ad.target(x0, eps, t)[row], v)


@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_flow_target(gens, family):
    ad = gens(family).trainable()
    assert ad.prediction_type == "flow"
    x0, eps = _x0_eps()
    t = torch.tensor([250.0, 900.0])
    assert torch.equal(ad.target(x0, eps, t), eps - x0)
    torch.testing.assert_close(ad.noise(x0, eps, t)[0], 0.75 * x0[0] + 0.25 * eps[0])
    torch.testing.assert_close(ad.noise(x0, eps, t)[1], 0.1 * x0[1] + 0.9 * eps[1])


def test_stable_audio_v_target_is_cos_sin():
    from mmalign.generators.stable_audio import edm_target

    x0, eps = _x0_eps((2, 4, 8))
    sigma = torch.tensor([0.5, 3.0])
    target = edm_target(x0, eps, sigma, 1.0, "v_prediction")
    for row, s in enumerate(sigma.tolist()):
        theta = math.atan(s)
        torch.testing.assert_close(target[row], math.cos(theta) * eps[row] - math.sin(theta) * x0[row])
    # the scheduler's own output preconditioning recovers x0 from this target
    from diffusers import EDMDPMSolverMultistepScheduler

    sched = EDMDPMSolverMultistepScheduler(sigma_data=1.0, prediction_type="v_prediction")
    s = sigma.view(-1, 1, 1)
    torch.testing.assert_close(sched.precondition_outputs(x0 + s * eps, target, s), x0)


# --- SDXL conditioning (reference/training.md §1.5, P8) -----------------------------------------


def test_sdxl_time_ids_and_embedding_width(gens):
    from mmalign.generators.sdxl import add_time_ids

    torch.testing.assert_close(add_time_ids([(1024, 1024)], [(0, 0)], (1024, 1024)),
                               torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]))  # official constant, P8
    gen = gens("sdxl")
    ad = gen.trainable()
    cond = ad.encode_prompts(PROMPTS, original_sizes=[(480, 640), (64, 48)], crops_top_left=[(3, 5), (0, 7)])
    assert cond["add_time_ids"].tolist() == [[480, 640, 3, 5, 32, 32], [64, 48, 0, 7, 32, 32]]
    te1, te2 = gen.pipe.text_encoder.config, gen.pipe.text_encoder_2.config
    assert cond["prompt_embeds"].shape == (2, 77, te1.hidden_size + te2.hidden_size)
    assert cond["pooled_prompt_embeds"].shape == (2, te2.projection_dim)
    assert ad.encode_prompts(PROMPTS[:1])["add_time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]


# --- attention ----------------------------------------------------------------------------------


def test_attention_backends(gens):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from mmalign.generators.attention import set_attention_backend

    gen = gens("sd")
    unet = gen.pipe.unet
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    ref = gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data
    set_attention_backend(unet, "math")
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    torch.testing.assert_close(gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data, ref, atol=1e-4, rtol=0)
    set_attention_backend(unet, "sdpa")
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    with pytest.raises(ConfigError, match="not one of"):
        set_attention_backend(unet, "fast")
    if not torch.cuda.is_available():
        for name in ("xformers", "flash"):
            with pytest.raises(ConfigError, match="CUDA"):
                set_attention_backend(unet, name)


def test_math_backend_on_dit_restricts_sdpa_kernel(gens):
    from mmalign.generators.attention import set_attention_backend

    gen = gens("sd3")
    ref = gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data
    set_attention_backend(gen.pipe.transformer, "math")
    assert "_mmalign_orig_forward" in gen.pipe.transformer.__dict__
    torch.testing.assert_close(gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data, ref, atol=1e-4, rtol=0)
    set_attention_backend(gen.pipe.transformer, "sdpa")
    assert "_mmalign_orig_forward" not in gen.pipe.transformer.__dict__


# --- loading: hub ids, offline, presets ---------------------------------------------------------


def test_hub_id_reaches_from_pretrained_unchanged(monkeypatch):
    import diffusers

    from mmalign.generators import load_generator
    from mmalign.generators.tiny import build_tiny

    seen = []

    def fake(cls, name, **kwargs):
        seen.append((cls.__name__, name, kwargs))
        return build_tiny("sdxl")

    hub_id = "stabilityai/stable-diffusion-xl-base-1.0"
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(fake))
    gen = load_generator(hub_id, device="cpu")
    assert seen[0][:2] == ("DiffusionPipeline", hub_id) and seen[0][2]["local_files_only"] is True
    assert gen.family == "sdxl"
    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_pretrained", classmethod(fake))
    load_generator(hub_id, family="sdxl", device="cpu", local_files_only=False)
    assert seen[1][:2] == ("StableDiffusionXLPipeline", hub_id) and seen[1][2]["local_files_only"] is False


def test_hub_id_offline_says_how_to_use_a_local_folder():
    from mmalign.generators import load_generator

    with pytest.raises(InputError, match="--generator /path/to/folder") as err:
        load_generator("stabilityai/stable-diffusion-xl-base-1.0", device="cpu")
    assert "local_files_only" in str(err.value)


@pytest.mark.parametrize("preset, module", [("synth-sdxl", "mmalign.synth.train"),
                                            ("synth-video", "mmalign.synth.train_video"),
                                            ("synth-audio", "mmalign.synth.train_audio")])
def test_missing_preset_names_the_training_command(monkeypatch, tmp_path, preset, module):
    import importlib.util
    import re

    import mmalign.generators as g

    monkeypatch.setattr(g, "asset_path", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(InputError, match=re.escape(f"python -m {module}")):
        g.load_generator(preset)
    assert importlib.util.find_spec(module) is not None


def test_unknown_folder_and_family(tmp_path):
    from mmalign.generators import load_generator

    with pytest.raises(InputError, match="model_index.json"):
        load_generator(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ConfigError, match="not a supported generator"):
        load_generator(tmp_path)
    with pytest.raises(ConfigError, match="unknown generator family"):
        load_generator(tmp_path, family="dalle")


# --- mmalign sample -----------------------------------------------------------------------------


def test_sample_cli_writes_media_manifest_and_grid(tmp_path):
    import typer
    from PIL import Image
    from typer.testing import CliRunner

    from mmalign.generators.cli import register
    from mmalign.generators.tiny import save_tiny

    app = typer.Typer()
    register(app)
    app.command("version")(lambda: None)  # keep typer in multi-command mode
    folder = save_tiny("sd", tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a red circle\n\ntwo blue squares\n")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = CliRunner().invoke(app, ["sample", "--generator", str(folder), "--prompts-file", str(tmp_path / "prompts.txt"),
                                       "--n", "2", "--seed", "7", "--steps", "2", "--out", str(out), "--grid", "--quiet"])
        assert res.exit_code == 0, res.output
        outs.append(out)
    rows = [json.loads(line) for line in (outs[0] / "manifest.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["index"], r["seed"]) for r in rows] == [
        ("a red circle", 0, 7), ("a red circle", 1, 7), ("two blue squares", 0, 7), ("two blue squares", 1, 7)]
    width, height = Image.open(outs[0] / "grid.png").size
    assert 64 <= width < 80 and 64 <= height < 80  # 2x2 tiles of 32 px plus padding
    for r in rows:
        assert (outs[0] / r["file"]).read_bytes() == (outs[1] / r["file"]).read_bytes()
    res = CliRunner().invoke(app, ["sample", "--generator", str(folder), "--out", str(tmp_path / "c")])
    assert res.exit_code != 0 and isinstance(res.exception, InputError)


def test_half_precision_load_keeps_fp32_only_modules(tmp_path):
    """``torch_dtype`` goes to ``from_pretrained`` only: a second ``.to(dtype)`` would cast the modules a
    model keeps in fp32 (Wan's norms and modulation table) to half precision."""
    from mmalign.generators import load_generator
    from mmalign.generators.tiny import save_tiny

    gen = load_generator(str(save_tiny("wan", tmp_path / "wan")), device="cpu", dtype="bfloat16")
    transformer = gen.pipe.transformer
    assert transformer.scale_shift_table.dtype == torch.float32
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
