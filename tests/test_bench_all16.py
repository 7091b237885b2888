"""All 16 VBench dimensions give a number on the vbench-standard suite from a VBench-layout weights folder
(tiny random models of the real classes: VBench's own models, and the labelled OWLv2 / BLIP substitutes),
and Quality / Semantic / Total are reported."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from mmalign.bench.detectors import DetectorBackbone, load_owlv2
from mmalign.bench.report import NORMALIZATION, build_results
from mmalign.bench.runner import run_benchmark
from mmalign.bench.suites import load_suite
from mmalign.media import VideoBatch, save_media

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: one prompt per dimension (the first entry of each in VBench_full_info.json): 11 files cover all 16
PROMPTS = ["In a still frame, a stop sign", "a bird and a cat", "A person is riding a bike", "a person swimming in ocean",
           "a person", "a red bicycle", "A beautiful coastal beach in spring, waves lapping on sand, Van Gogh style",
           "A beautiful coastal beach in spring, waves lapping on sand, in super slow motion",
           "Close up of grapes on a rotating table.", "alley", "a bicycle on the left of a car, front view"]


def test_all_sixteen_dimensions_from_a_vbench_weights_folder(tmp_path):
    from test_bench_action import _save as save_umt
    from test_bench_action import tiny_umt_state
    from test_bench_amt import _save as save_amt
    from test_bench_detectors import tiny_blip, tiny_owlv2
    from test_bench_musiq import _save as save_musiq
    from test_bench_musiq import random_musiq
    from test_bench_viclip import _save as save_viclip
    from test_bench_viclip import tiny_viclip_state
    from test_bench_weights import princeton_state_dict, random_raft, save_torchscript_clip, tiny_openai_clip
    from timm.models.vision_transformer import VisionTransformer

    from mmalign.bench.amt import AMTS

    w = tmp_path / "vbench_cache"
    torch.manual_seed(0)
    dino = VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=1, num_heads=1, num_classes=0)
    (w / "dino_model").mkdir(parents=True)
    torch.save(dino.state_dict(), w / "dino_model" / "dino_vitbase16_pretrain.pth")
    for arch in ("ViT-B-32", "ViT-L-14"):
        save_torchscript_clip(tiny_openai_clip(), w / "clip_model" / f"{arch}.pt")
    (w / "aesthetic_model" / "emb_reader").mkdir(parents=True)
    torch.save(torch.nn.Linear(32, 1).state_dict(), w / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth")
    save_musiq(random_musiq(), w)
    (w / "raft_model" / "models").mkdir(parents=True)
    torch.save(princeton_state_dict(random_raft()), w / "raft_model" / "models" / "raft-things.pth")
    torch.manual_seed(0)
    save_amt(AMTS(), w)
    umt = tiny_umt_state()
    umt["head.bias"] = torch.full((400,), -6.0)
    umt["head.bias"][0] = 8.0  # "riding a bike"
    save_umt(umt, w)
    save_viclip(tiny_viclip_state(), w)
    tiny_owlv2(w)  # -> w/substitutes/owlv2
    tiny_blip(w / "blip")  # -> w/blip/substitutes/blip-caption
    shutil.move(w / "blip" / "substitutes" / "blip-caption", w / "substitutes" / "blip-caption")

    g = torch.Generator().manual_seed(0)
    for p in PROMPTS:  # 5 frames of 128x144 (RAFT and AMT-S need 128 px) at 8 fps
        save_media(VideoBatch(torch.rand(1, 5, 3, 128, 144, generator=g), fps=8.0), tmp_path / "videos", [f"{p}-0"])
    owl = load_owlv2(w / "substitutes" / "owlv2", torch.device("cpu"))
    owl.threshold = 0.0  # the random detector's scores are low: keep its boxes so every formula sees detections
    suite = load_suite("vbench-standard")
    # what vbench-standard's backbones should list: VBench's models first, the labelled substitutes after
    prefs = {"flow": ["raft-things", "raft-large"], "detector": ["grit", "owlv2"], "captioner": ["tag2text", "blip-caption"]}
    run = run_benchmark(suite, tmp_path / "videos", tmp_path / "out", weights_dir=w, backbones=prefs, progress=False,
                        preloaded={"owlv2": DetectorBackbone("owlv2", detector=owl, note=owl.note)})
    res = build_results(run)
    dims = res["dimensions"]
    assert set(dims) == set(NORMALIZATION) and not run.unavailable and not res["skipped"]
    for d, e in dims.items():
        assert e["status"] == "ok" and e["raw"] is not None and "failures" not in e, (d, e)
    substitutes = {d for d, e in dims.items() if not e["comparable_with_vbench"]}
    assert substitutes == {"object_class", "multiple_objects", "color", "spatial_relationship", "scene"}
    assert dims["human_action"]["raw"] == 1.0 and dims["human_action"]["backbone"] == "vbench:umt"
    assert dims["subject_consistency"]["backbone"] == "vbench:dino-vitb16"
    assert dims["aesthetic_quality"]["backbone"] == "vbench:laion-aesthetic"
    assert dims["dynamic_degree"]["backbone"] == "vbench:raft-things"
    assert dims["motion_smoothness"]["backbone"] == "vbench:amt-s"
    assert dims["imaging_quality"]["backbone"] == "vbench:musiq-spaq"
    assert dims["temporal_style"]["backbone"] == "vbench:viclip"
    s = res["scores"]
    assert all(s[k] is not None for k in ("quality", "semantic", "total"))
    assert s["missing"] == {"quality": [], "semantic": []} and s["total"] == pytest.approx(s["total_present"])
