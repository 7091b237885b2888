"""Scorer core: HPS letterbox geometry, raw cosine, parity with a direct open_clip forward,
differentiable scoring, video aggregation, cards, the family registry, offline errors, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _scoring_tiny import TINY_CFG, TINY_VIT, tiny_hps, tiny_open_clip

from mmalign.errors import ConfigError, InputError
from mmalign.media import AudioBatch, ImageBatch, VideoBatch
from mmalign.scoring.preprocess import letterbox, letterbox_geometry, normalize

torch.set_num_threads(1)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMALIGN_WEIGHTS_DIR", str(tmp_path / "weights"))


# -- HPS letterbox (hpsv2 ResizeMaxSize): geometry and padded values -------------------------------------
@pytest.mark.parametrize("hw, resized, pad", [
    ((512, 768), (149, 224), (0, 37, 0, 38)),
    ((768, 512), (224, 149), (37, 0, 38, 0)),
    ((1080, 1920), (126, 224), (0, 49, 0, 49)),
    ((300, 224), (224, 167), (28, 0, 29, 0)),
    ((1024, 1024), (224, 224), (0, 0, 0, 0)),
    ((224, 300), (167, 224), (0, 28, 0, 29)),
    ((224, 224), (224, 224), (0, 0, 0, 0)),
])
def test_letterbox_geometry_table(hw, resized, pad):
    h, w, p = letterbox_geometry(*hw, 224)
    assert (h, w) == resized and p == pad


def test_letterbox_padded_pixels_are_minus_mean_over_std():
    x = torch.rand(1, 3, 512, 768)
    y = normalize(letterbox(x, 224), MEAN, STD)
    assert y.shape == (1, 3, 224, 224)
    expect = torch.tensor([-1.7923, -1.7521, -1.4802])
    assert torch.allclose(y[0, :, 0, 0], expect, atol=1e-4)        # top padding row
    assert torch.allclose(y[0, :, 223, 100], expect, atol=1e-4)    # bottom padding row
    assert not torch.allclose(y[0, :, 112, 112], expect, atol=1e-2)  # content


# -- raw cosine + parity: our pipeline vs a direct open_clip forward with upstream's preprocessing ----------
def _reference_hps(model, tokenizer, pil_images, prompt):
    """hpsv2 img_score.py::score (ResizeMaxSize letterbox, Normalize, diag of image·textᵀ), rebuilt with
    torchvision on each PIL image."""
    import torchvision.transforms.functional as TF

    feats = []
    for im in pil_images:
        x = TF.to_tensor(im.convert("RGB"))
        h, w = x.shape[-2:]
        scale = 224 / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        x = TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        ph, pw = 224 - nh, 224 - nw
        x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
        feats.append(TF.normalize(x, MEAN, STD))
    with torch.no_grad():
        out = model(torch.stack(feats), tokenizer([prompt] * len(feats)))
        img, txt = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        return (img @ txt.T).diagonal()


def test_hps_pipeline_matches_direct_open_clip_forward_1e5():
    import numpy as np
    import open_clip
    from PIL import Image

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (96, 144, 3), dtype=np.uint8)) for _ in range(16)]
    scorer = tiny_hps()
    ref = _reference_hps(scorer.model, open_clip.get_tokenizer(TINY_VIT), pil, "a cat with two horns on its head")
    px = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in pil])
    ours = scorer.score(ImageBatch(px), "a cat with two horns on its head", batch_size=5)
    assert ours.shape == (16,)
    assert torch.allclose(ours, ref.float(), atol=1e-5), (ours - ref).abs().max()
    # raw cosine, no logit_scale and no ×100
    assert ours.abs().max() <= 1.0 + 1e-6
    assert not torch.allclose(ours, 100 * ref)


def test_differentiable_scoring_gives_pixel_gradients_and_default_is_no_grad():
    scorer = tiny_hps()
    px = torch.rand(2, 3, 64, 48, requires_grad=True)
    s = scorer.score(px, ["a red circle", "a blue square"], differentiable=True)
    s.sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    assert not scorer.score(px.detach(), "a red circle").requires_grad


def test_batching_does_not_change_scores_and_compare_is_bradley_terry():
    scorer = tiny_hps(bt_scale=50.0)
    a, b = torch.rand(6, 3, 40, 40), torch.rand(6, 3, 40, 40)
    p = [f"prompt {i % 2}" for i in range(6)]
    assert torch.allclose(scorer.score(a, p, batch_size=1), scorer.score(a, p, batch_size=6), atol=1e-6)
    pab = scorer.compare(a, b, p)
    assert torch.allclose(pab, torch.sigmoid(50.0 * (scorer.score(a, p) - scorer.score(b, p))), atol=1e-6)
    assert torch.allclose(pab + scorer.compare(b, a, p), torch.ones(6), atol=1e-6)
    order = scorer.rank([(a, "x")])[0]
    s = scorer.score(a, "x")
    assert s[order[0]] == s.max() and s[order[-1]] == s.min()


def test_video_frame_aggregation_mean_min_stride():
    scorer = tiny_hps()
    v = torch.rand(2, 4, 3, 32, 32)
    frames = scorer.score(ImageBatch(v.reshape(8, 3, 32, 32)), ["a", "a", "a", "a", "b", "b", "b", "b"]).view(2, 4)
    assert torch.allclose(scorer.score(VideoBatch(v), ["a", "b"]), frames.mean(1), atol=1e-6)
    scorer.video_reduce, scorer.video_stride = "min", 2
    assert torch.allclose(scorer.score(VideoBatch(v), ["a", "b"]), frames[:, ::2].min(1).values, atol=1e-6)


# -- bad inputs → the matching MMAlignError ----------------------------------------------------------
def test_bad_inputs_raise_input_errors():
    scorer = tiny_hps()
    imgs = ImageBatch(torch.rand(3, 3, 32, 32))
    with pytest.raises(InputError, match="3 media items"):
        scorer.score(imgs, ["a", "b"])
    with pytest.raises(InputError, match="not audio"):
        scorer.score(AudioBatch(torch.zeros(2, 1, 100)), ["a", "b"])
    with pytest.raises(InputError, match="no prompts"):
        scorer.score(imgs)
    with pytest.raises(InputError, match="raw tensor"):
        scorer.score(torch.rand(3, 32, 32), "a")
    with pytest.raises(InputError, match="prompt 1"):
        scorer.score(imgs, ["a", 3, "c"])
    with pytest.raises(InputError, match="pair them"):
        scorer.compare(imgs, imgs[:2], "a")
    with pytest.raises(InputError):
        scorer.score(["not", "media"], "a")


# -- cards, registry, loading, offline -----------------------------------------------------------------
def test_shipped_cards_validate_and_name_a_registered_family():
    from mmalign.scoring import list_scorers, read_card, scorer_builder

    names = list_scorers()
    assert names == sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "scorers").glob("*.yaml"))
    for n in names:
        card = read_card(n)
        assert card.name == n and card.license and card.paper and card.modalities
        assert callable(scorer_builder(card))  # the family is registered once the card's plugin is imported


def test_registry_unknown_family_duplicate_and_bad_plugin(tmp_path):
    from mmalign.scoring import SCORER_FAMILIES, load_scorer

    card = tmp_path / "fam.yaml"
    card.write_text(_card_text(tmp_path, "none").replace("family: open_clip", "family: open_clp"))
    with pytest.raises(ConfigError, match=r"fam\.yaml: architecture\.family: unknown scorer family 'open_clp'; "
                                          r"did you mean 'open_clip'\?"):
        load_scorer(card)
    with pytest.raises(ConfigError, match="registered twice"):
        SCORER_FAMILIES.register("open_clip")(lambda card, local_files_only=None, **kw: None)
    plug = tmp_path / "plug.yaml"
    plug.write_text("plugin: no_such_module_of_mmalign\n" + _card_text(tmp_path, "none"))
    with pytest.raises(ConfigError, match=r"plug\.yaml: plugin module 'no_such_module_of_mmalign' cannot be imported"):
        load_scorer(plug)


def test_open_clip_config_registration_is_content_checked_and_leaves_no_folders(tmp_path, monkeypatch):
    import tempfile

    from open_clip import factory

    from mmalign.scoring.clip import register_open_clip_config

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    paths = list(factory._MODEL_CONFIG_PATHS)
    name = "mmalign-test-registration"
    cfg = {**TINY_CFG, "embed_dim": 8}
    assert register_open_clip_config(name, cfg) == name
    assert register_open_clip_config(name, json.loads(json.dumps(cfg))) == name  # the same content again: fine
    with pytest.raises(ConfigError, match=f"'{name}' with another config"):
        register_open_clip_config(name, {**cfg, "embed_dim": 4})
    with pytest.raises(ConfigError, match="'ViT-B-32' with another config"):
        register_open_clip_config("ViT-B-32", cfg)  # a built-in name is never overwritten
    assert factory.get_model_config(name)["embed_dim"] == 8 and factory.get_model_config("ViT-B-32")["embed_dim"] == 512
    assert factory._MODEL_CONFIG_PATHS == paths and not list(tmp_path.iterdir())


def test_unknown_scorer_and_unknown_card_key_are_config_errors(tmp_path):
    from mmalign.scoring import load_scorer

    with pytest.raises(ConfigError, match="hpsv2"):
        load_scorer("hpsv3")
    bad = tmp_path / "bad.yaml"
    text = (_card_text(tmp_path, "none") + "\nlicence: MIT\n")
    bad.write_text(text)
    with pytest.raises(ConfigError, match="license"):
        load_scorer(bad)
    with pytest.raises(ConfigError, match="valid options"):
        load_scorer("hpsv2", colour="red")


def test_missing_weights_offline_says_where_to_put_them(tmp_path):
    from mmalign.scoring import load_scorer

    with pytest.raises(InputError, match=r"MMALIGN_WEIGHTS_DIR|weights[/\\]hpsv2"):
        load_scorer("hpsv2", local_files_only=True)
    with pytest.raises(InputError, match="offline"):
        load_scorer("laion-aesthetic")  # HF_HUB_OFFLINE=1 from the fixture


def _card_text(tmp_path, source: str, path: str = "") -> str:
    ckpt = "{source: none}" if source == "none" else f"{{source: local, path: '{path}'}}"
    return f"""name: tiny-hps
description: test card
architecture:
  family: open_clip
  model: {TINY_VIT}
  tokenizer: open_clip
  config: {json.dumps(TINY_CFG)}
checkpoint: {ckpt}
preprocessing: {{kind: letterbox, size: 224}}
score: {{formula: cosine, bt_scale: logit_scale}}
modalities: [image, video]
license: test
paper: test
"""


def test_load_scorer_from_card_with_local_safetensors(tmp_path):
    from safetensors.torch import save_file

    from mmalign.scoring import load_scorer

    model = tiny_open_clip(seed=3)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    card = tmp_path / "tiny.yaml"
    card.write_text(_card_text(tmp_path, "local", str(ckpt)))
    scorer = load_scorer(card, device="cpu")
    assert scorer.name == "tiny-hps" and scorer.bt_scale == pytest.approx(float(model.logit_scale.exp()))
    x = torch.rand(3, 3, 50, 70)
    direct = tiny_hps(seed=3).score(x, "a red circle")
    assert torch.allclose(scorer.score(x, "a red circle"), direct, atol=1e-6)
    # the user weights folder takes precedence over the card path, and a wrong file is an InputError
    user = tmp_path / "weights" / "tiny-hps"
    user.mkdir(parents=True)
    (user / "tiny.safetensors").write_bytes(b"garbage")
    card.write_text(_card_text(tmp_path, "local", str(ckpt)).replace(f"path: '{ckpt}'", f"path: '{ckpt}', filename: tiny.safetensors"))
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_scorer(card)
