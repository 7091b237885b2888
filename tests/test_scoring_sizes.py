"""Media of any size end to end: MediaList, per-item preprocessing (each item scores as it would alone),
videos of different sizes and lengths, folders of mixed sizes in `mmalign score`, training on pairs of
different sizes, and parity of PickScore / CLIP score / LAION aesthetic with their reference recipes'
own code (transformers CLIPProcessor + CLIPModel; open_clip create_model_and_transforms) on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _scoring_tiny import (TINY_VIT, save_tiny_hf_clip, save_tiny_open_clip, tiny_clap, tiny_hps, write_card)
from mmalign.errors import InputError
from mmalign.media import AudioBatch, ImageBatch, MediaList, VideoBatch, concat, load_folder, load_image

torch.set_num_threads(1)
PROMPTS = ["a woman in uniform", "a red portrait", "an old photo"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMALIGN_WEIGHTS_DIR", str(tmp_path / "weights"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real photos of different sizes and modes on disk: crops and downscales of matplotlib's grace_hopper.jpg."""
    from matplotlib import cbook

    d = tmp_path_factory.mktemp("photos")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        full = im.convert("RGB")
    w, h = full.size
    variants = {
        "a_full.jpg": full,
        "b_face.png": full.crop((100, 40, 100 + 301, 40 + 257)),
        "c_wide.jpg": full.crop((0, 200, w, 200 + 180)).resize((317, 95), Image.Resampling.LANCZOS),
        "d_gray.png": full.crop((50, 0, 50 + 140, 0 + 333)).convert("L"),
    }
    for name, image in variants.items():
        image.save(d / name, quality=92) if name.endswith(".jpg") else image.save(d / name)
    return sorted(d.glob("*.[jp]*g"))


def _alone(scorer, items, prompts) -> torch.Tensor:
    return torch.cat([scorer.score(item, p) for item, p in zip(items, prompts)])


# -- MediaList and concat ---------------------------------------------------------------------------------
def test_media_list_splits_indexes_and_concat_stacks_only_equal_shapes():
    a = ImageBatch(torch.rand(2, 3, 8, 12), prompts=["x", "y"], metadata=[{"name": "a0"}, {"name": "a1"}])
    b = ImageBatch(torch.rand(1, 3, 10, 6), prompts=["z"], metadata=[{"name": "b"}])
    ml = concat([a, b])
    assert isinstance(ml, MediaList) and len(ml) == 3 and ml.modality == "image"
    assert ml.prompts == ["x", "y", "z"] and [m["name"] for m in ml.metadata] == ["a0", "a1", "b"]
    assert torch.equal(ml[1].items[0].pixels, a.pixels[1:2]) and len(ml[[2, 0]]) == 2 and len(ml[1:]) == 2
    same = concat([a[0], a[1]])
    assert isinstance(same, ImageBatch) and torch.equal(same.pixels, a.pixels)
    assert MediaList.cat([ml, a]).prompts == ["x", "y", "z", "x", "y"]
    assert ImageBatch(torch.rand(1, 3, 4, 4)).prompts is None and concat([a, ImageBatch(torch.rand(1, 3, 4, 4))]).prompts is None
    with pytest.raises(InputError, match="one modality"):
        MediaList([a, AudioBatch(torch.zeros(1, 1, 10))])
    with pytest.raises(InputError, match="list of"):
        MediaList(a)


# -- per-item preprocessing: a list scores as each item alone ------------------------------------------------
def test_images_of_different_sizes_score_as_each_alone_in_any_batching():
    scorer = tiny_hps()
    items = [ImageBatch(torch.rand(1, 3, *hw)) for hw in [(40, 60), (64, 48), (32, 32), (50, 90), (40, 60)]]
    prompts = [f"prompt {i % 2}" for i in range(5)]
    alone = _alone(scorer, items, prompts)
    for batch_size in (1, 2, 5):
        assert torch.allclose(scorer.score(items, prompts, batch_size=batch_size), alone, atol=1e-6)
    assert torch.allclose(scorer.score(MediaList(items), prompts), alone, atol=1e-6)
    # gradients reach every item's own pixels
    px = [it.pixels.clone().requires_grad_(True) for it in items[:3]]
    scorer.score([ImageBatch(x) for x in px], prompts[:3], differentiable=True).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in px)


def test_videos_of_different_sizes_and_lengths_aggregate_per_video():
    scorer = tiny_hps()
    videos = [VideoBatch(torch.rand(1, t, 3, h, w)) for t, h, w in [(3, 32, 40), (5, 48, 32), (2, 32, 40)]]
    prompts = ["a", "b", "c"]
    for reduce, stride in (("mean", 1), ("min", 2)):
        scorer.video_reduce, scorer.video_stride = reduce, stride
        alone = _alone(scorer, videos, prompts)
        assert torch.allclose(scorer.score(videos, prompts, batch_size=4), alone, atol=1e-6)
    frames = scorer.score(ImageBatch(videos[1].pixels[0, ::2]), "b")
    assert torch.allclose(alone[1], frames.min(), atol=1e-6)


def test_scorers_without_their_own_resize_score_groups_of_equal_shape():
    scorer, _ = tiny_clap(["a", "fast", "slow", "melody"])
    clips = [AudioBatch(torch.rand(1, 1, n) - 0.5, sample_rate=16000) for n in (16000, 9000, 16000, 12000)]
    prompts = ["a fast melody", "a slow melody", "a slow melody", "a melody"]
    assert torch.allclose(scorer.score(clips, prompts, batch_size=3), _alone(scorer, clips, prompts), atol=1e-6)


# -- folders of mixed sizes: load_folder and `mmalign score` ----------------------------------------------------
def test_load_folder_ragged_keeps_each_size(photos):
    folder = photos[0].parent
    with pytest.raises(InputError, match=r"sizes \(H, W\) differ"):
        load_folder(folder)
    media, report = load_folder(folder, ragged=True)
    assert isinstance(media, MediaList) and [Path(m["path"]).name for m in media.metadata] == [p.name for p in photos]
    assert [tuple(it.pixels.shape[-2:]) for it in media.items] == [tuple(load_image(p).pixels.shape[-2:]) for p in photos]
    resized, _ = load_folder(folder, ragged=True, size=16)
    assert isinstance(resized, ImageBatch) and resized.pixels.shape == (4, 3, 16, 16)


def test_cli_scores_a_folder_of_mixed_sizes_and_names_bad_files(photos, tmp_path):
    import shutil

    import typer
    from typer.testing import CliRunner

    from mmalign.scoring import load_scorer
    from mmalign.scoring.cli import register

    d = tmp_path / "media"
    d.mkdir()
    for p in photos:
        shutil.copy(p, d / p.name)
    data = photos[0].read_bytes()
    (d / "e_truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "f_empty.png").write_bytes(b"")
    names = [p.name for p in photos] + ["e_truncated.jpg", "f_empty.png"]
    (d / "manifest.jsonl").write_text("".join(json.dumps({"file": n, "prompt": PROMPTS[i % 3]}) + "\n" for i, n in enumerate(names)))
    card = write_card(tmp_path / "tiny-hps.yaml", family="open_clip", model=f"{TINY_VIT}-32",
                      checkpoint=save_tiny_open_clip(tmp_path / "oc"), kind="letterbox")
    app = typer.Typer()
    register(app)
    out = tmp_path / "scores.jsonl"
    res = CliRunner().invoke(app, ["score", "--scorer", card, "--media", str(d), "--out", str(out), "--quiet",
                                   "--device", "cpu", "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert "loaded 4, skipped 2" in res.output
    assert "skipped e_truncated.jpg:" in res.output and "skipped f_empty.png: empty file" in res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == [p.name for p in photos]
    scorer = load_scorer(card, device="cpu")
    alone = [float(scorer.score(load_image(p), PROMPTS[i % 3])) for i, p in enumerate(photos)]
    assert np.allclose([r["score"] for r in rows], alone, atol=1e-6)


# -- training on pairs of different sizes ---------------------------------------------------------------------
def test_train_scorer_on_pairs_of_different_sizes(tmp_path):
    from mmalign.media import save_media
    from mmalign.scoring import load_scorer
    from mmalign.scoring.train import evaluate_pairs, read_pair_set, train_scorer

    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(12):
        h, w = 24 + 8 * (i % 3), 40 - 8 * (i % 2)
        bright = ImageBatch(torch.rand(1, 3, h, w, generator=g) * 0.3 + 0.7)
        dark = ImageBatch(torch.rand(1, 3, w, h, generator=g) * 0.3)
        save_media(bright, tmp_path / "img", [f"b{i}.png"])
        save_media(dark, tmp_path / "img", [f"d{i}.png"])
        rows.append({"prompt": "a bright image", "chosen": f"img/b{i}.png", "rejected": f"img/d{i}.png", "label": 1.0})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_pair_set(tmp_path / "pairs.jsonl")
    assert isinstance(pairs.a, MediaList) and len(pairs.a) == 12
    card = write_card(tmp_path / "tiny-hps.yaml", family="open_clip", model=f"{TINY_VIT}-32",
                      checkpoint=save_tiny_open_clip(tmp_path / "oc"), kind="letterbox")
    scorer = load_scorer(card, device="cpu")
    losses = train_scorer(scorer, pairs, steps=15, batch_size=8, lr=3e-3, progress=False, log=lambda s: None, log_every=0)
    assert sum(losses[-4:]) < sum(losses[:4])
    assert evaluate_pairs(scorer, pairs)["pooled_accuracy"] >= 0.9


# -- parity with the reference recipes on real photos ------------------------------------------------------------
def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((ours - ref).abs() / ref.abs().clamp_min(1e-6)).max())


def test_pickscore_matches_clipprocessor_and_clipmodel_on_photos(photos, tmp_path):
    """PickScore's infer_example: AutoProcessor on PIL images and the prompt, exp(logit_scale)·cos; with a real
    CLIPTokenizer (a BatchEncoding reaches get_text_features)."""
    from transformers import CLIPModel, CLIPProcessor

    from mmalign.scoring import load_scorer

    folder = save_tiny_hf_clip(tmp_path / "pick")
    card = write_card(tmp_path / "tiny-pick.yaml", family="hf_clip", model="CLIPModel", checkpoint=folder,
                      tokenizer=str(folder), formula="scaled_cosine", extra=f"processor: '{folder}'")
    processor, model = CLIPProcessor.from_pretrained(folder), CLIPModel.from_pretrained(folder).eval()
    ref = []
    with torch.no_grad():
        for i, p in enumerate(photos):
            image = processor(images=Image.open(p), return_tensors="pt")
            text = processor(text=PROMPTS[i % 3], padding=True, truncation=True, max_length=77, return_tensors="pt")
            img = F.normalize(model.get_image_features(**image).pooler_output, dim=-1)
            txt = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
            ref.append(model.logit_scale.exp() * (img * txt).sum())
    ref = torch.stack(ref)
    scorer = load_scorer(card, device="cpu")
    media, _ = load_folder(photos[0].parent, ragged=True)
    prompts = [PROMPTS[i % 3] for i in range(len(photos))]
    ours = scorer.score(media, prompts, batch_size=3)
    assert _rel(ours, ref) < 1e-5, (ours, ref)
    assert torch.allclose(ours, _alone(scorer, [load_image(p) for p in photos], prompts), atol=1e-6)
    # a mixed list: file items take the processor, in-memory tensors the tensor path, each in its own place
    mixed = scorer.score([load_image(photos[0]), ImageBatch(torch.rand(1, 3, 40, 50)), load_image(photos[1])],
                          [prompts[0], "an old photo", prompts[1]])
    assert _rel(mixed[[0, 2]], ref[:2]) < 1e-5 and torch.isfinite(mixed).all()


@pytest.mark.parametrize("formula", ["cosine", "aesthetic_mlp"])
def test_clip_score_and_aesthetic_match_open_clip_create_model_and_transforms(photos, tmp_path, formula):
    """CLIP score (raw cos, ImageReward's CLIPScore) and the LAION aesthetic head on the L2-normalised
    embedding (simple_inference.py), both on open_clip's own model and preprocess of the saved folder."""
    import open_clip
    from safetensors.torch import save_file

    from mmalign.scoring import load_scorer
    from mmalign.scoring.clip import AestheticMLP

    folder = save_tiny_open_clip(tmp_path / "oc")
    head_path = None
    if formula == "aesthetic_mlp":
        torch.manual_seed(1)
        head = AestheticMLP(16).eval()
        head_path = tmp_path / "head.safetensors"
        save_file(head.state_dict(), str(head_path))
    card = write_card(tmp_path / f"tiny-{formula}.yaml", family="open_clip", model=f"{TINY_VIT}-32", checkpoint=folder,
                      formula=formula, head=head_path)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    prompts = [PROMPTS[i % 3] for i in range(len(photos))]
    with torch.no_grad():
        img = F.normalize(model.eval().encode_image(torch.stack([preprocess(Image.open(p)) for p in photos])), dim=-1)
        if formula == "cosine":
            ref = (img * F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)).sum(-1)
        else:
            ref = head(img).squeeze(-1)
    scorer = load_scorer(card, device="cpu")
    media, _ = load_folder(photos[0].parent, ragged=True)
    ours = scorer.score(media, prompts if formula == "cosine" else None, batch_size=3)
    assert _rel(ours, ref) < 1e-5, (ours, ref)
    # the same pixels as in-memory tensors take the tensor path (the port the PIL path replaces)
    tensor_path = scorer.score([ImageBatch(it.pixels) for it in media.items], prompts)
    assert not torch.allclose(tensor_path, ref, rtol=1e-5, atol=0)


# -- CLAP against its reference recipe on real audio ------------------------------------------------------------
def test_clap_equals_clap_processor_and_model_on_real_audio(tmp_path):
    """A ClapModel + ClapProcessor folder saved by transformers; a recorded pluck (11 025 Hz stereo) and
    shorter crops of it from disk. Reference recipe: soundfile → mono → scipy ``resample_poly`` to the
    extractor's rate → ``ClapProcessor`` (repeat-pad) → ``get_audio_features`` / ``get_text_features``, cosine."""
    from math import gcd

    import soundfile as sf
    from scipy.signal import resample_poly
    from transformers import ClapModel, ClapProcessor

    from _scoring_tiny import save_tiny_hf_clap
    from mmalign.media import load_media
    from mmalign.scoring import load_scorer

    model_dir = save_tiny_hf_clap(tmp_path / "clap")
    pluck = Path(__file__).parent / "data" / "pluck-pcm16.wav"
    data, rate = sf.read(pluck, dtype="float32", always_2d=True)
    files = [pluck]
    for n in (2000, 900):  # crops of other lengths, same rate and channels
        files.append(tmp_path / f"crop{n}.wav")
        sf.write(files[-1], data[:n], rate, subtype="PCM_16")
    prompts = ["a melody", "a fast melody", "a pluck"]

    proc, ref_model = ClapProcessor.from_pretrained(model_dir), ClapModel.from_pretrained(model_dir).eval()
    target = proc.feature_extractor.sampling_rate
    g = gcd(rate, target)
    clips = [resample_poly(sf.read(f, dtype="float32", always_2d=True)[0].mean(1), target // g, rate // g) for f in files]
    inputs = proc(text=prompts, audio=clips, sampling_rate=target, return_tensors="pt", padding=True)
    with torch.no_grad():
        a = ref_model.get_audio_features(input_features=inputs["input_features"], is_longer=inputs.get("is_longer"))
        t = ref_model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    a, t = (getattr(x, "pooler_output", x) for x in (a, t))
    reference = F.cosine_similarity(a, t, dim=-1)

    card = tmp_path / "tiny-clap.yaml"
    card.write_text(f"""name: tiny-clap
description: test
architecture: {{family: hf_clap, model: ClapModel, tokenizer: hf}}
checkpoint: {{source: local, path: '{model_dir}'}}
preprocessing: {{kind: clap_mel, sample_rate: {target}}}
score: {{formula: cosine, bt_scale: 1.0}}
modalities: [audio]
license: test
paper: test
""")
    scorer = load_scorer(str(card), device="cpu")
    ours = scorer.score([load_media(f) for f in files], prompts)  # three lengths in one call
    torch.testing.assert_close(ours, reference.float(), rtol=1e-5, atol=2e-7)  # cosines: 6e-8 apart here
