"""Generators: tiny models of every family through the real save/load path, seeds, the shared sampling
call, training targets, SDXL micro-conditioning, the sidecar schema, attention backends, releasing the
encoders, the family registry, hub ids and the sample CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmalign.errors import ConfigError, InputError
from mmalign.media import AudioBatch, ImageBatch, VideoBatch

torch.set_num_threads(1)

FAMILIES_LIST = ["sd", "sdxl", "sd3", "animatediff", "animatediff_sdxl", "wan", "stable_audio", "musicgen"]
DIFFUSION = [f for f in FAMILIES_LIST if f != "musicgen"]
EXPECTED = {  # media type, data shape for 2 prompts x n=2
    "sd": (ImageBatch, (4, 3, 32, 32)), "sdxl": (ImageBatch, (4, 3, 32, 32)), "sd3": (ImageBatch, (4, 3, 32, 32)),
    "animatediff": (VideoBatch, (4, 4, 3, 32, 32)), "animatediff_sdxl": (VideoBatch, (4, 4, 3, 32, 32)), "wan": (VideoBatch, (4, 5, 3, 32, 32)),
    "stable_audio": (AudioBatch, (4, 1, 512)), "musicgen": (AudioBatch, (4, 1, 208))  # 16 token frames, less the delay pattern
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
    from mmalign.zoo.make_tokenizer import grammar_words
    from mmalign.generators.tiny import clip_tokenizer, t5_tokenizer

    words = set(grammar_words()) | set(pytest.importorskip("mmalign.synth.prompts").VOCABULARY)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    assert [w for w in sorted(words) if clip.tokenize(w) != [w + "</w>"]] == []
    assert [w for w in sorted(words) if t5.tokenize(w) != ["▁" + w]] == []


# --- every family: build, save, reload, sample --------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES_LIST)
def test_family_samples_shape_dtype_and_seed(gens, family):
    gen = gens(family)
    cls, shape = EXPECTED[family]
    # MusicGen's length is in token frames (its first frames are delay-pattern padding), the others' steps
    length = {"max_new_tokens": 16} if family == "musicgen" else {"steps": 2}
    media = gen.sample(PROMPTS, n=2, seed=0, progress=False, **length)
    assert isinstance(media, cls) and tuple(media.data.shape) == shape and media.data.dtype == torch.float32
    assert media.prompts == ["a red circle", "a red circle", "two blue squares", "two blue squares"]
    assert [m["index"] for m in media.metadata] == [0, 1, 0, 1]
    again = gen.sample(PROMPTS, n=2, seed=0, progress=False, **length)
    assert torch.equal(media.data, again.data)
    other = gen.sample(PROMPTS[:1], n=1, seed=1, progress=False, **length)
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


#: what each family's pipeline is called with besides the prompts (its tiny sidecar's call defaults),
#: and the field of the pipeline output that holds the media
PIPELINE_CALL = {
    "sd": ("images", {}), "sdxl": ("images", {}), "sd3": ("images", {"max_sequence_length": 16}),
    "animatediff": ("frames", {"num_frames": 4}), "animatediff_sdxl": ("frames", {"num_frames": 4}),
    "wan": ("frames", {"num_frames": 5, "height": 32, "width": 32, "max_sequence_length": 16}),
    "stable_audio": ("audios", {}),
}


@pytest.mark.parametrize("family", DIFFUSION)
def test_sample_is_the_pipeline_call_bit_for_bit(gens, family):
    """The one shared sampling call gives exactly what calling the diffusers pipeline by hand gives
    (per-item generators seeded with the item seeds, guidance from the sidecar, the family's call defaults)."""
    from mmalign.generators._common import item_seeds

    gen = gens(family)
    media = gen.sample(PROMPTS, n=1, seed=5, steps=2, progress=False)
    field, extra = PIPELINE_CALL[family]
    gens_by_item = [torch.Generator().manual_seed(s) for s in item_seeds(5, 2)]
    with torch.no_grad():
        out = gen.pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.0, generator=gens_by_item, output_type="pt",
                       **extra)
    expected = getattr(out, field).float().clamp(*((-1, 1) if family == "stable_audio" else (0, 1)))
    assert torch.equal(media.data, expected)


def test_musicgen_is_sampling_only(gens):
    with pytest.raises(ConfigError, match="sampling-only"):
        gens("musicgen").trainable()


def test_musicgen_has_no_steps(gens):
    gen = gens("musicgen")
    with pytest.raises(InputError, match="autoregressive.*max_new_tokens") as err:
        gen.sample(PROMPTS[:1], steps=16, progress=False)
    assert "1000 per second" in str(err.value)  # the tiny EnCodec: 16 kHz, hop 16
    short = gen.sample(PROMPTS[:1], max_new_tokens=12, progress=False)
    longer = gen.sample(PROMPTS[:1], max_new_tokens=16, progress=False)
    assert longer.data.shape[-1] - short.data.shape[-1] == 4 * 16  # 4 more frames of 16 samples


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


# --- SDXL micro-conditioning (Podell et al. 2023, §2.2) ------------------------------------------


def test_sdxl_time_ids_and_embedding_width(gens):
    from mmalign.generators.sdxl import add_time_ids

    torch.testing.assert_close(add_time_ids([(1024, 1024)], [(0, 0)], (1024, 1024)),
                               torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]))  # SDXL base at 1024 px
    gen = gens("sdxl")
    ad = gen.trainable()
    cond = ad.encode_prompts(PROMPTS, original_sizes=[(480, 640), (64, 48)], crops_top_left=[(3, 5), (0, 7)])
    assert cond["add_time_ids"].tolist() == [[480, 640, 3, 5, 32, 32], [64, 48, 0, 7, 32, 32]]
    te1, te2 = gen.pipe.text_encoder.config, gen.pipe.text_encoder_2.config
    assert cond["prompt_embeds"].shape == (2, 77, te1.hidden_size + te2.hidden_size)
    assert cond["pooled_prompt_embeds"].shape == (2, te2.projection_dim)
    assert ad.encode_prompts(PROMPTS[:1])["add_time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]


# --- sidecar (mmalign_generator.json) ----------------------------------------------------------


def test_shipped_sidecars_load_and_write_back_unchanged(tmp_path):
    from mmalign.generators._common import DEFAULTS_FILE, read_defaults, write_defaults
    from mmalign.paths import asset_path

    files = sorted(asset_path("models").glob(f"*/{DEFAULTS_FILE}"))
    assert [f.parent.name for f in files] == ["synth-audio", "synth-sdxl", "synth-video"]
    for path in files:
        out = tmp_path / path.parent.name
        out.mkdir()
        write_defaults(out, read_defaults(path.parent))
        canonical = [json.dumps(json.loads(p.read_text()), sort_keys=True) for p in (path, out / DEFAULTS_FILE)]
        assert canonical[0] == canonical[1]  # same keys, values and int/float types


@pytest.mark.parametrize("text, problem", [
    ('{"steps": 20, "guidanse": 4.0}', "unknown key 'guidanse'; did you mean 'guidance'"),
    ('{"steps": "many"}', "key 'steps'"),
    ('{"steps": 2.5}', "key 'steps'"),
    ('{"steps": 20,}', "not valid JSON"),
    ('[20, 4.0]', "must be a JSON object"),
])
def test_bad_sidecar_is_one_config_error_naming_file_and_key(tmp_path, text, problem):
    from mmalign.generators import load_generator
    from mmalign.generators._common import DEFAULTS_FILE
    from mmalign.generators.tiny import save_tiny

    folder = save_tiny("sd", tmp_path / "sd")
    (folder / DEFAULTS_FILE).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_generator(folder, local_files_only=True)
    assert str(err.value).startswith(f"{folder / DEFAULTS_FILE}: ") and problem in str(err.value)


def test_write_defaults_validates(tmp_path):
    from mmalign.generators._common import DEFAULTS_FILE, write_defaults

    with pytest.raises(ConfigError, match=f"{DEFAULTS_FILE}: unknown key 'frames'"):
        write_defaults(tmp_path, {"family": "wan", "frames": 9})
    assert not (tmp_path / DEFAULTS_FILE).exists()


# --- attention ----------------------------------------------------------------------------------

NEEDS_CUDA = ["efficient", "cudnn", "xformers"]


def _runnable(backend: str) -> bool:
    import importlib.util

    return torch.cuda.is_available() and (backend != "xformers" or importlib.util.find_spec("xformers") is not None)


@pytest.mark.parametrize("family", ["sd", "sd3", "wan", "stable_audio"])
def test_every_attention_backend(gens, family):
    """Every name on a UNet and the three DiTs. The fused and math kernels compute the same
    softmax(QK^T)V in fp32 and differ only in summation order (observed up to 1e-6 on outputs in
    [0, 1] after two steps and the VAE); 1e-5 allows for that and still catches a wrong scale or a
    dropped mask, which move outputs by 1e-2 or more."""
    from mmalign.generators.attention import BACKENDS, set_attention_backend

    assert BACKENDS == ("sdpa", "math", "flash", "efficient", "cudnn", "xformers")
    gen = gens(family)
    ref = gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data
    for backend in BACKENDS:
        if backend in NEEDS_CUDA and not _runnable(backend):
            with pytest.raises(ConfigError, match="CUDA|xformers"):
                set_attention_backend(gen.denoiser, backend)
            continue
        set_attention_backend(gen.denoiser, backend)
        out = gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=f"{family} {backend}")
    set_attention_backend(gen.denoiser, "sdpa")
    assert torch.equal(gen.sample(PROMPTS[:1], seed=0, steps=2, progress=False).data, ref)
    with pytest.raises(ConfigError, match="not one of"):
        set_attention_backend(gen.denoiser, "fast")


@pytest.mark.parametrize("family", ["sd", "sd3", "wan", "stable_audio"])
def test_kernel_restriction_reaches_every_attention_call(gens, family):
    """Restricting SDPA to a kernel this machine lacks must make the denoiser fail: then the
    restriction encloses all of its attention calls (direct SDPA and diffusers' dispatcher alike)."""
    from torch.nn.attention import SDPBackend

    from mmalign.generators.attention import _restrict_kernel

    if torch.cuda.is_available():
        pytest.skip("every SDPA kernel may exist on CUDA")
    gen = gens(family)
    _restrict_kernel(gen.denoiser, SDPBackend.EFFICIENT_ATTENTION)
    try:
        with pytest.raises(RuntimeError, match="No (viable|available) (backend|kernel)"):
            gen.sample(PROMPTS[:1], seed=0, steps=1, progress=False)
    finally:
        _restrict_kernel(gen.denoiser, None)
    assert "forward" not in gen.denoiser.__dict__


def test_math_on_a_unet_uses_the_classic_processor(gens):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from mmalign.generators.attention import set_attention_backend

    unet = gens("sd").pipe.unet
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    set_attention_backend(unet, "math")
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor}
    set_attention_backend(unet, "sdpa")
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}


def test_xformers_processors_and_undo(gens):
    """Which processor each denoiser gets for xformers (installed without running: CPU needs no xformers),
    and that "sdpa" restores the defaults."""
    from diffusers.models.attention_dispatch import AttentionBackendName
    from diffusers.models.attention_processor import (AttnProcessor2_0, JointAttnProcessor2_0, XFormersAttnProcessor,
                                                      XFormersJointAttnProcessor)

    from mmalign.generators.attention import _set_processors, set_attention_backend

    for family, default, xformers in [("sd", AttnProcessor2_0, XFormersAttnProcessor),
                                      ("sd3", JointAttnProcessor2_0, XFormersJointAttnProcessor)]:
        denoiser = gens(family).denoiser
        _set_processors(denoiser, "xformers")
        assert {type(p) for p in denoiser.attn_processors.values()} == {xformers}
        set_attention_backend(denoiser, "sdpa")
        assert {type(p) for p in denoiser.attn_processors.values()} == {default}
    wan = gens("wan").denoiser
    _set_processors(wan, "xformers")
    assert {p._attention_backend for p in wan.attn_processors.values()} == {AttentionBackendName.XFORMERS}
    set_attention_backend(wan, "sdpa")
    assert {p._attention_backend for p in wan.attn_processors.values()} == {None}
    audio = gens("stable_audio").denoiser
    before = [type(p) for p in audio.attn_processors.values()]
    with pytest.raises(ConfigError, match="StableAudioAttnProcessor2_0 has no xformers"):
        _set_processors(audio, "xformers")
    assert [type(p) for p in audio.attn_processors.values()] == before


def test_attention_on_a_lora_denoiser_survives_deepcopy_and_undoes():
    """The trainer sets the recipe's backend once on the LoRA-injected denoiser (and may deep-copy it
    as a frozen reference): the copy must run its own weights, and "sdpa" must undo it."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    from mmalign.generators.attention import set_attention_backend
    from mmalign.generators.tiny import build_tiny

    unet = build_tiny("sd").unet
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                       init_lora_weights=False), unet)
    g = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([10]), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=text).sample
        set_attention_backend(unet, "math")
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=text).sample, ref, atol=1e-5, rtol=0)
        twin = copy.deepcopy(unet)
        for p in twin.parameters():
            p.add_(1.0)
        assert not torch.allclose(twin(x, t, encoder_hidden_states=text).sample, ref, atol=1e-2)
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=text).sample, ref, atol=1e-5, rtol=0)
        set_attention_backend(unet, "sdpa")
        assert "forward" not in unet.__dict__
        assert torch.equal(unet(x, t, encoder_hidden_states=text).sample, ref)
    assert sum("lora_A" in n for n, _ in unet.named_parameters()) > 0


def test_musicgen_attention_names():
    from mmalign.generators.attention import transformers_attention

    assert transformers_attention("sdpa") == "sdpa" and transformers_attention("math") == "eager"
    if not torch.cuda.is_available():
        for name in ("flash", "efficient", "cudnn", "xformers"):
            with pytest.raises(ConfigError):
                transformers_attention(name)


# --- releasing the encoders ---------------------------------------------------------------------


def test_release_encoders_keeps_sampling(tmp_path):
    """After the latents are cached the trainer releases the VAE and text encoders: they go to CPU
    (on a CPU-only run nothing moves), and sampling still gives the same output at the same seed."""
    from mmalign.generators import load_generator
    from mmalign.generators.tiny import save_tiny

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = load_generator(save_tiny("sdxl", tmp_path / "sdxl"), device=device)
    before = gen.sample(PROMPTS, seed=3, steps=2, progress=False).data
    adapter = gen.trainable()
    assert adapter.encoders() == {"vae": gen.pipe.vae, "text_encoder": gen.pipe.text_encoder,
                                  "text_encoder_2": gen.pipe.text_encoder_2}
    adapter.release_encoders()
    encoders = list(adapter.encoders().values())
    assert all(p.device.type == "cpu" for m in encoders for p in m.parameters())
    assert gen.released == ([] if device == "cpu" else ["vae", "text_encoder", "text_encoder_2"])
    assert next(gen.denoiser.parameters()).device.type == device
    assert torch.equal(gen.sample(PROMPTS, seed=3, steps=2, progress=False).data, before)
    assert all(p.device.type == "cpu" for m in encoders for p in m.parameters())  # released again after sampling

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


@pytest.mark.parametrize("preset, module", [("synth-sdxl", "mmalign.zoo.train_sdxl"),
                                            ("synth-video", "mmalign.zoo.train_video"),
                                            ("synth-audio", "mmalign.zoo.train_audio")])
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
    with pytest.raises(ConfigError, match="unknown generator family 'dalle'"):
        load_generator(tmp_path, family="dalle")


def test_family_registry():
    from mmalign.generators import FAMILIES, family_class, list_generators
    from mmalign.generators.sdxl import SDXLGenerator

    assert list_generators() == {"families": sorted(FAMILIES_LIST), "presets": ["synth-audio", "synth-sdxl", "synth-video"]}
    assert family_class("sdxl") is SDXLGenerator and FAMILIES.get("sdxl") is SDXLGenerator
    assert all(FAMILIES.get(name).family == name for name in FAMILIES_LIST)
    with pytest.raises(ConfigError, match="did you mean 'sdxl'"):
        family_class("sdx")


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
