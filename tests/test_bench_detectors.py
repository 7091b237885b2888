"""The GRiT substitute: OWLv2 (transformers) as an open-vocabulary detector for object_class,
multiple_objects, color and spatial_relationship, on a tiny random OWLv2 of the same classes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mmalign.bench import formulas as fm
from mmalign.bench.backbones import LoadContext, load_backbone
from mmalign.bench.detectors import COCO_CLASSES, DetectorBackbone, load_owlv2
from mmalign.bench.dimensions import MIDDLE16
from mmalign.bench.report import build_results
from mmalign.bench.runner import decode, run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.media import VideoBatch, save_media
from mmalign.paths import asset_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_owlv2(folder: Path) -> Path:
    """A random 1-layer OWLv2 and its processor, saved like ``save_pretrained`` checkpoints are."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    # the synth CLIP vocabulary, with <|startoftext|> moved off id 0: OWLv2 treats a query whose first
    # id is 0 as padding (OpenAI's BOS is 49406)
    vocab = json.loads(asset_path("tokenizers", "clip-synth", "vocab.json").read_text())
    last = max(vocab, key=vocab.get)
    vocab[last], vocab["<|startoftext|>"] = vocab["<|startoftext|>"], vocab[last]
    tok_dir = folder / "tok"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    shutil.copy(asset_path("tokenizers", "clip-synth", "merges.txt"), tok_dir / "merges.txt")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    cfg = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(0)
    Owlv2ForObjectDetection(cfg).save_pretrained(folder / "substitutes" / "owlv2")
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok).save_pretrained(
        folder / "substitutes" / "owlv2")
    return folder


@pytest.fixture(scope="module")
def owl_weights(tmp_path_factory) -> Path:
    return tiny_owlv2(tmp_path_factory.mktemp("owl"))


def test_owlv2_backbone_loads_and_detects(owl_weights):
    bb = load_backbone("owlv2", LoadContext(owl_weights, torch.device("cpu")))
    assert isinstance(bb, DetectorBackbone) and bb.label == "substitute:owlv2" and "GRiT" in bb.note
    det = bb.detector
    frames = torch.randint(0, 256, (3, 3, 48, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    queries = [("car", "car"), ("car", "red car"), ("cat", "cat")]
    det.threshold = 0.0  # keep every box of the random model
    out = det.detect(frames, queries)
    assert len(out) == 3 and all(out)
    for frame in out:
        assert [d.score for d in frame] == sorted((d.score for d in frame), reverse=True)
        for d in frame:
            assert (d.label, d.caption) in queries and 0.0 <= d.score <= 1.0
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 48
        for a in frame:  # NMS per label: no two boxes of one label overlap above 0.5 IoU
            assert all(fm.box_iou(a.box, b.box) <= 0.5 + 1e-6 for b in frame if b is not a and b.label == a.label)
    det.threshold = 1.0
    assert det.detect(frames, queries) == [[], [], []]  # scores are sigmoids: nothing passes 1.0
    with pytest.raises(ValueError, match="queries"):
        det.detect(frames)


def test_owlv2_missing_is_a_named_reason(tmp_path):
    from mmalign.bench.runner import resolve_backbones

    bbs = resolve_backbones(["detector"], {"detector": ["grit", "owlv2"]}, LoadContext(tmp_path, torch.device("cpu")))
    assert "detector" in bbs.missing and "detectron2" in bbs.missing["detector"]


def test_detector_dimensions_on_the_substitute(owl_weights, tmp_path):
    """All four GRiT dimensions give a number from OWLv2, each equal to the formula on the detector's own output."""
    entries = [
        Entry("a car", ("object_class",), {"object_class": {"object": "car"}}),
        Entry("a cat and a dog", ("multiple_objects",), {"multiple_objects": {"object": "cat and dog"}}),
        Entry("a red car", ("color",), {"color": {"color": "red"}}),
        Entry("a cat on the left of a dog", ("spatial_relationship",), {"spatial_relationship": {"spatial_relationship": {
            "object_a": "cat", "object_b": "dog", "relationship": "on the left of"}}}),
    ]
    dims = ["object_class", "multiple_objects", "color", "spatial_relationship"]
    suite = Suite(name="det", modality="video", entries=entries, dimensions=dims, samples_per_prompt=1,
                  backbones={"detector": ["grit", "owlv2"]})
    g = torch.Generator().manual_seed(1)
    for e in entries:
        save_media(VideoBatch(torch.rand(1, 20, 3, 48, 64, generator=g), fps=8.0), tmp_path / "v", [f"{e.prompt}-0"])
    det = load_owlv2(owl_weights / "substitutes" / "owlv2", torch.device("cpu"))
    det.threshold = 0.05  # the random model's scores are low: keep some boxes so the formulas see detections
    pre = {"owlv2": DetectorBackbone("owlv2", detector=det, note=det.note)}
    run = run_benchmark(suite, tmp_path / "v", tmp_path / "out", progress=False, preloaded=pre)
    res = build_results(run)
    for d in dims:
        e = res["dimensions"][d]
        assert e["backbone"] == "substitute:owlv2" and not e["comparable_with_vbench"], d
        assert "GRiT" in e["note"]
    # object_class recomputed from the detector on the 16 'middle' frames with the COCO vocabulary
    frames, fps = decode(str(tmp_path / "v" / "a car-0.mp4"))
    idx = MIDDLE16.indices(frames.shape[0], fps)
    dets = det.detect(frames[idx], [(c, c) for c in COCO_CLASSES])
    want = sum("car" in {x.label for x in f} for f in dets) / len(dets)
    assert res["dimensions"]["object_class"]["raw"] == pytest.approx(want)
    assert all(res["dimensions"][d]["status"] in ("ok", "no videos") for d in dims)
    assert res["dimensions"]["multiple_objects"]["raw"] is not None
    assert res["dimensions"]["spatial_relationship"]["raw"] is not None


def tiny_blip(folder: Path) -> Path:
    """A random 1-layer BLIP captioner with a 40-word BERT vocabulary, saved like ``save_pretrained``."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    words = ["a", "picture", "of", "view", "alley", "night", "street", "park", "amusement", "at", "an", "the", "road",
             "with", "and", "people", "sky", "tree", "car", "house", "water", "lake", "city", "old", "narrow", "dark",
             "light", "on", "in", "building", "field", "grass", "bridge", "river", "beach", "sand", "snow", "mountain"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words]
    (folder / "tok").mkdir(parents=True)
    (folder / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "tok" / "vocab.txt"), bos_token="[DEC]")
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=5, pad_token_id=0,
                         sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(0)
    out = folder / "substitutes" / "blip-caption"
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(out)
    return folder


def test_scene_on_the_blip_substitute(tmp_path):
    root = tiny_blip(tmp_path / "w")
    entry = Entry("alley", ("scene",), {"scene": {"scene": {"scene": "alley"}}})
    save_media(VideoBatch(torch.rand(1, 4, 3, 40, 48, generator=torch.Generator().manual_seed(0)), fps=8.0), tmp_path / "v",
               ["alley-0"])
    suite = Suite(name="sc", modality="video", entries=[entry], dimensions=["scene"], samples_per_prompt=1,
                  backbones={"captioner": ["tag2text", "blip-caption"]})
    run = run_benchmark(suite, tmp_path / "v", tmp_path / "out", weights_dir=root, progress=False)
    res = build_results(run)["dimensions"]["scene"]
    assert res["backbone"] == "substitute:blip-caption" and not res["comparable_with_vbench"] and "Tag2Text" in res["note"]
    cap = load_backbone("blip-caption", LoadContext(root, torch.device("cpu"))).detector
    frames, fps = decode(str(tmp_path / "v" / "alley-0.mp4"))
    captions = cap.caption(frames[MIDDLE16.indices(frames.shape[0], fps)])
    assert len(captions) == 16 and all(c.startswith("a picture of") for c in captions)  # the prompt starts every caption
    assert all(len(c.split()) >= 4 for c in captions)  # min_length 10 tokens: the model added words
    want = sum(fm.scene_frame_success(c, "alley") for c in captions) / 16
    assert res["raw"] == pytest.approx(want)
