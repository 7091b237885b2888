"""PickScore, LAION aesthetic (incl. the unnormalised-embedding negative test), CLAP, combine, CLI, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _scoring_tiny import TINY_CFG, TINY_VIT, tiny_clap, tiny_hps
from mmalign.errors import ConfigError, InputError
from mmalign.media import AudioBatch, ImageBatch
from mmalign.scoring.preprocess import ImagePreprocess
from mmalign.scoring.tokenizer import WordTokenizer

torch.set_num_threads(1)
WORDS = ["a", "red", "blue", "circle", "square", "fast", "slow", "melody"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMALIGN_WEIGHTS_DIR", str(tmp_path / "weights"))


def tiny_pickscore():
    from transformers import CLIPConfig, CLIPModel

    from mmalign.scoring.clip import ClipScorer

    tok = WordTokenizer(WORDS)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, eos_token_id=tok.eot_id),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    return ClipScorer(CLIPModel(cfg), tok.hf, ImagePreprocess("center_crop", 32), backend="hf", formula="scaled_cosine")


def test_pickscore_scaled_cosine_and_probabilities():
    import torch.nn.functional as F

    s = tiny_pickscore()
    x = torch.rand(4, 3, 40, 48)
    scores = s.score(x, "a red circle")
    with torch.no_grad():
        img = F.normalize(s.model.get_image_features(pixel_values=s.preprocess(x)).pooler_output, dim=-1)
        txt = F.normalize(s.model.get_text_features(**s.tokenizer(["a red circle"])).pooler_output, dim=-1)
    expect = s.model.logit_scale.exp() * (img @ txt.T).squeeze(1)
    assert torch.allclose(scores, expect, atol=1e-5)
    assert not torch.allclose(scores, (img @ txt.T).squeeze(1))  # not the unscaled cosine (t2v_metrics)
    probs = s.probs(x, "a red circle")
    assert torch.allclose(probs, torch.softmax(expect, 0), atol=1e-5)
    # with β = 1, Bradley-Terry on two images is the two-image softmax of PickScore's infer_example
    assert torch.allclose(s.compare(x[:1], x[1:2], "a red circle"), torch.softmax(expect[:2], 0)[:1], atol=1e-5)


def test_aesthetic_head_uses_l2_normalised_embedding_negative_test():
    import torch.nn.functional as F

    from mmalign.scoring.clip import AestheticMLP, ClipScorer, aesthetic_score

    torch.manual_seed(0)
    head = AestheticMLP(16).eval()
    base = tiny_hps()
    s = ClipScorer(base.model, base.tokenizer, base.preprocess, formula="aesthetic_mlp", head=head)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        emb = base.image_features(base.preprocess(x))
        ours = s.score(x)                                    # prompts not needed
        assert torch.allclose(ours, head(F.normalize(emb, dim=-1)).squeeze(-1), atol=1e-6)
        # scale the embedding (as an unnormalised CLIP feature of norm ~20 would be): the proper
        # score is unchanged, the unnormalised one (the known failure: scores of 20-30) is not
        big = emb * 20.0 / emb.norm(dim=-1, keepdim=True)
        assert torch.allclose(aesthetic_score(big, head), ours, atol=1e-5)
        wrong = aesthetic_score(big, head, normalize=False)
        assert (wrong - ours).abs().min() > 1e-3
        # the head is affine (no activations): score(αx + (1−α)y) = α·score(x) + (1−α)·score(y)
        u, v = torch.randn(1, 16), torch.randn(1, 16)
        lin = head(0.3 * u + 0.7 * v) - (0.3 * head(u) + 0.7 * head(v))
        assert float(lin.abs().max()) < 1e-5
    # upstream's checkpoint layout (improved-aesthetic-predictor simple_inference.py::MLP, input 768) loads strictly
    dims = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64), "layers.7": (1, 16)}
    upstream = {f"{k}.{p}": torch.zeros(shape if p == "weight" else shape[:1]) for k, shape in dims.items() for p in ("weight", "bias")}
    AestheticMLP(768).load_state_dict(upstream, strict=True)


# -- CLAP -------------------------------------------------------------------------------------------
def test_clap_torch_log_mel_matches_the_feature_extractor():
    from mmalign.scoring.clap import log_mel

    s, fe = tiny_clap(WORDS)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (2, 11000)).astype(np.float32)  # shorter than 1 s → repeatpad
    ref = fe(list(x), sampling_rate=16000, return_tensors="pt")["input_features"]
    padded, longer = s.frontend.fit_length(torch.from_numpy(x))
    ours = log_mel(padded, s.frontend).unsqueeze(1)
    assert ours.shape == ref.shape and not longer.any()
    assert torch.allclose(ours, ref.float(), atol=2e-3), (ours - ref).abs().max()


def test_clap_scores_audio_resamples_and_is_differentiable():
    from mmalign.scoring.clap import resample

    s, _ = tiny_clap(WORDS)
    t = torch.arange(44100) / 44100
    tone = torch.sin(2 * torch.pi * 440 * t)[None]
    r = resample(tone, 44100, 16000)
    assert r.shape[-1] == 16000
    spec = torch.fft.rfft(r[0]).abs()
    assert abs(int(spec.argmax()) - 440) <= 1  # 1 s of audio: bin = Hz
    audio = AudioBatch(torch.stack([tone, tone * 0.5]).repeat(1, 2, 1), sample_rate=44100)  # stereo → mono
    sc = s.score(audio, ["a fast melody", "a slow melody"])
    assert sc.shape == (2,) and torch.isfinite(sc).all()
    wav = (torch.rand(1, 1, 16000) - 0.5).requires_grad_(True)
    s.score(AudioBatch(wav, sample_rate=16000), "a melody", differentiable=True).sum().backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0
    with pytest.raises(InputError, match="scores audio"):
        s.score(ImageBatch(torch.rand(1, 3, 8, 8)), "a")


@pytest.mark.parametrize("rate,target,n", [(8000, 16000, 8000), (44100, 16000, 4410), (16000, 48000, 999), (48000, 16000, 1001),
                                           (22050, 16000, 5000), (44100, 48000, 441)])
def test_clap_resample_is_scipy_resample_poly_with_gradients(rate, target, n):
    """One resampler for both paths, equal to ``resample_poly``: the differentiable reward scores what the plain
    one does (a linear-interpolation stand-in once scored synth-audio samples 0.51 with gradients and 0.61 without)."""
    from math import gcd

    from scipy.signal import resample_poly

    from mmalign.scoring.clap import resample

    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    g = gcd(rate, target)
    ref = torch.from_numpy(resample_poly(x.numpy(), target // g, rate // g, axis=-1))
    assert torch.allclose(resample(x, rate, target), ref, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    out = resample(xg, rate, target)
    assert torch.allclose(out.detach(), ref, atol=1e-12)
    out.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_clap_differentiable_score_equals_the_plain_score():
    s, _ = tiny_clap(WORDS)
    wav = torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(0)) * 0.3
    plain = s.score(AudioBatch(wav, sample_rate=8000), ["a fast melody", "a slow melody"])
    grad = s.score(AudioBatch(wav.clone().requires_grad_(True), sample_rate=8000), ["a fast melody", "a slow melody"],
                   differentiable=True)
    assert torch.allclose(grad.detach(), plain, atol=1e-5), (grad, plain)


# -- combine ------------------------------------------------------------------------------------------
def _z_in_pairs(s: torch.Tensor) -> torch.Tensor:
    """z-scores within items (0, 1) and (2, 3): with two items, ±1 by sign of the difference (population std)."""
    return torch.stack([torch.sign(s[0] - s[1]), torch.sign(s[1] - s[0]), torch.sign(s[2] - s[3]), torch.sign(s[3] - s[2])])


def test_combine_per_prompt_normalisation_weights_and_thresholds():
    from mmalign.scoring import combine

    a, b = tiny_hps(seed=1, name="a"), tiny_hps(seed=2, name="b")
    x = torch.rand(4, 3, 32, 32)
    p = ["p", "p", "q", "q"]
    c = combine({a: 1.0, b: 0.5})
    sa, sb = a.score(x, p), b.score(x, p)
    assert torch.allclose(c.score(x, p), _z_in_pairs(sa) + 0.5 * _z_in_pairs(sb), atol=1e-4)
    thr = float(sa.min())  # cap "a" at its minimum → it stops contributing differences
    capped = combine({a: 1.0, b: 0.5}, thresholds={"a": thr}).score(x, p)
    assert torch.allclose(capped, 0.5 * _z_in_pairs(sb), atol=1e-4)
    with pytest.raises(InputError, match="≥ 2 items per prompt"):
        c.score(x, ["p", "q", "r", "r"])
    with pytest.raises(ConfigError):
        combine({a: 1.0}, normalize="softmax")
    with pytest.raises(ConfigError, match="thresholds"):
        combine({a: 1.0}, thresholds={"zzz": 0.1})


# -- CLI and training ----------------------------------------------------------------------------------
SMALL_CFG = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "image_size": 32, "patch_size": 8}}


def _tiny_card(tmp_path, small: bool = False) -> str:
    card = tmp_path / "tiny.yaml"
    arch, cfg, size = (TINY_VIT + "-32", SMALL_CFG, 32) if small else (TINY_VIT, TINY_CFG, 224)
    card.write_text(f"""name: tiny-hps
description: test
architecture: {{family: open_clip, model: {arch}, tokenizer: open_clip, config: {json.dumps(cfg)}}}
checkpoint: {{source: none}}
preprocessing: {{kind: letterbox, size: {size}}}
score: {{formula: cosine, bt_scale: 100.0}}
modalities: [image, video]
license: test
paper: test
""")
    return str(card)


def test_cli_score_folder_skips_bad_files_and_writes_jsonl(tmp_path):
    import typer
    from PIL import Image
    from typer.testing import CliRunner

    from mmalign.scoring.cli import register

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(d / f"{i}.png")
    (d / "3.png").write_bytes(b"not a png")
    (d / "manifest.jsonl").write_text("".join(json.dumps({"file": f"{i}.png", "prompt": f"p{i % 2}"}) + "\n" for i in range(4)))
    app = typer.Typer()
    register(app)
    out = tmp_path / "scores.jsonl"
    args = ["score", "--scorer", _tiny_card(tmp_path), "--media", str(d), "--out", str(out), "--quiet", "--device", "cpu"]
    res = CliRunner().invoke(app, args + ["--on-error", "skip"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == ["0.png", "1.png", "2.png"] and rows[1]["prompt"] == "p1"
    assert "mean" in res.output and "p0" in res.output
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, InputError) and "3.png" in str(res.exception)
    (d / "3.png").unlink()
    (d / "manifest.jsonl").unlink()
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, InputError) and "--prompts-file" in str(res.exception)
    txt = tmp_path / "prompts.txt"
    txt.write_text("a\nb\n")
    res = CliRunner().invoke(app, args + ["--prompts-file", str(txt)])
    assert isinstance(res.exception, InputError) and "2 prompts for 3 media files" in str(res.exception)


def test_train_scorer_learns_a_preference_and_saves_a_loadable_card(tmp_path):
    from mmalign.scoring import load_scorer
    from mmalign.scoring.train import PairSet, evaluate_pairs, save_trained, train_scorer

    scorer = load_scorer(_tiny_card(tmp_path, small=True), device="cpu")
    g = torch.Generator().manual_seed(0)
    bright = torch.rand(32, 3, 32, 32, generator=g) * 0.3 + 0.7
    dark = torch.rand(32, 3, 32, 32, generator=g) * 0.3
    lab = (torch.arange(32) % 2).float()  # alternate which side is the bright one
    a = torch.where(lab.view(-1, 1, 1, 1) == 1, bright, dark)
    b = torch.where(lab.view(-1, 1, 1, 1) == 1, dark, bright)
    pairs = PairSet(ImageBatch(a), ImageBatch(b), ["a bright image"] * 32, lab)
    before = evaluate_pairs(scorer, pairs)["pooled_accuracy"]
    rng_state = torch.random.get_rng_state()
    losses = train_scorer(scorer, pairs, steps=20, batch_size=16, lr=3e-3, progress=False, log=lambda s: None, log_every=0)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG is left as it was
    after = evaluate_pairs(scorer, pairs)["pooled_accuracy"]
    assert after >= 0.9 and sum(losses[-5:]) < sum(losses[:5]), (before, after)
    save_trained(scorer, tmp_path / "out", {"pooled_accuracy": after})
    again = load_scorer(tmp_path / "out" / "card.yaml", device="cpu")
    assert torch.allclose(again.score(a[:4], "a bright image"), scorer.score(a[:4], "a bright image"), atol=1e-5)
    with pytest.raises(InputError, match="labels must be in"):
        PairSet(ImageBatch(a), ImageBatch(b), ["x"] * 32, lab * 2)
    with pytest.raises(InputError, match="steps ≥ 1"):
        train_scorer(scorer, pairs, steps=0, progress=False)


def test_the_caption_term_teaches_which_caption_goes_with_which_item(tmp_path):
    """Pairs that say nothing (all ties) teach nothing about captions; a CaptionSet next to them does: the
    item → text contrastive loss makes the scorer prefer each color's own caption."""
    from mmalign.scoring import load_scorer
    from mmalign.scoring.train import CaptionSet, PairSet, caption_logits, train_scorer

    g = torch.Generator().manual_seed(0)
    red = torch.rand(16, 3, 32, 32, generator=g) * 0.2 + torch.tensor([0.8, 0.0, 0.0]).view(1, 3, 1, 1)
    blue = torch.rand(16, 3, 32, 32, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.8]).view(1, 3, 1, 1)
    items, captions = ImageBatch(torch.cat([red, blue])), ["a red image"] * 16 + ["a blue image"] * 16
    ties = PairSet(ImageBatch(red), ImageBatch(blue), ["an image"] * 16, torch.full((16,), 0.5))

    def right(scorer) -> float:
        s_red, s_blue = scorer.score(items, "a red image"), scorer.score(items, "a blue image")
        return float(torch.cat([s_red[:16] > s_blue[:16], s_blue[16:] > s_red[16:]]).float().mean())

    scorer = load_scorer(_tiny_card(tmp_path, small=True), device="cpu")
    logits, target = caption_logits(scorer, items[[0, 16, 1]], ["a red image", "a blue image", "a red image"])
    assert logits.shape == (3, 2) and target.tolist() == [0, 1, 0]  # one column per distinct caption
    train_scorer(scorer, ties, captions=CaptionSet(items, captions), steps=30, batch_size=16, lr=3e-3, progress=False,
                 log=lambda s: None, log_every=0)
    assert right(scorer) == 1.0
    with pytest.raises(InputError, match="one caption per item"):
        CaptionSet(items, captions[:3])
    with pytest.raises(ConfigError, match="two-tower"):  # the exact oracle has no embeddings to contrast
        caption_logits(load_scorer("synth-oracle"), items[:2], ["a red image", "a blue image"])
