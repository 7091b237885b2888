"""VBench's weight files as users have them (Vchitect/VBench@45e79ec ``vbench/utils.py::init_submodules``
cache layout): OpenAI TorchScript CLIP archives, princeton-vl/RAFT ``raft-things.pth``, a corrupt file
that makes only its own dimensions unavailable, ``--suite custom`` on videos with any names, the
static filter as its own step, ``--strict``, and the backbone label of every number."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmalign.bench.backbones import (
    LoadContext,
    clip_transform,
    load_backbone,
    load_openai_clip,
    load_raft_things,
    raft_backbone_from_model,
)
from mmalign.bench.report import build_results, write_report
from mmalign.bench.runner import decode, run_benchmark
from mmalign.bench.suites import custom_suite, prompt_from_filename
from mmalign.errors import ConfigError
from mmalign.media import VideoBatch, save_media
from _reference_src import reference_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------
# fake VBench weight files


def tiny_openai_clip() -> torch.nn.Module:
    """An open_clip CLIP in OpenAI's layout (widths multiple of 64: OpenAI's heads = width // 64)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(3)
    vision = CLIPVisionCfg(layers=1, width=64, head_width=64, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    return open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


def save_torchscript_clip(model: torch.nn.Module, path: Path) -> None:
    """Save ``model`` as OpenAI's ``clip.load`` archives are: a TorchScript module whose state dict holds
    OpenAI's keys (OpenAI keeps the causal mask as a plain attribute, not a buffer)."""
    mask = model._buffers.pop("attn_mask")
    model.attn_mask = mask
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(path))
    del model.attn_mask
    model.register_buffer("attn_mask", mask, persistent=False)


# torchvision ``raft_large`` module names -> princeton-vl/RAFT names (core/extractor.py, core/update.py),
# written out independently of mmalign's mapping (applied in this order, on whole components)
TV_TO_PRINCETON = (
    (r"^feature_encoder\.", "fnet."),
    (r"^context_encoder\.", "cnet."),
    (r"^(fnet|cnet)\.convnormrelu\.0\.", r"\1.conv1."),
    (r"^(fnet|cnet)\.convnormrelu\.1\.", r"\1.norm1."),
    (r"^(fnet|cnet)\.conv\.", r"\1.conv2."),
    (r"\.convnormrelu([12])\.0\.", r".conv\1."),
    (r"\.convnormrelu([12])\.1\.", r".norm\1."),
    (r"^update_block\.motion_encoder\.convcorr([12])\.0\.", r"update_block.encoder.convc\1."),
    (r"^update_block\.motion_encoder\.convflow([12])\.0\.", r"update_block.encoder.convf\1."),
    (r"^update_block\.motion_encoder\.conv\.0\.", "update_block.encoder.conv."),
    (r"^update_block\.recurrent_block\.convgru([12])\.conv([zrq])\.", r"update_block.gru.conv\2\1."),
    (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."),
    (r"^mask_predictor\.conv\.", "update_block.mask.2."),
)


def princeton_state_dict(tv_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """torchvision RAFT weights as a princeton ``raft-things.pth`` (saved from nn.DataParallel: ``module.``;
    a residual block's ``norm3`` is the module also stored as ``downsample.1``)."""
    out = {}
    for key, value in tv_model.state_dict().items():
        k = key
        for pat, rep in TV_TO_PRINCETON:
            k = re.sub(pat, rep, k)
        out["module." + k] = value.clone()
        m = re.match(r"^(cnet\.layer\d\.\d)\.downsample\.1\.(.*)$", k)
        if m:
            out[f"module.{m.group(1)}.norm3.{m.group(2)}"] = value.clone()
    return out


def random_raft() -> torch.nn.Module:
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(5)
    model = raft_large(weights=None)
    for mod in model.modules():  # non-trivial batch-norm statistics, so a misplaced one shows
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A VBench cache folder: CLIP ViT-B/32 as a TorchScript archive, raft-things.pth, a corrupt ViT-L/14."""
    root = tmp_path_factory.mktemp("vbench_cache")
    clip, raft = tiny_openai_clip(), random_raft()
    save_torchscript_clip(clip, root / "clip_model" / "ViT-B-32.pt")
    (root / "raft_model" / "models").mkdir(parents=True)
    torch.save(princeton_state_dict(raft), root / "raft_model" / "models" / "raft-things.pth")
    (root / "clip_model" / "ViT-L-14.pt").write_bytes(b"PK\x03\x04 not a real archive" * 40)
    (root / "aesthetic_model" / "emb_reader").mkdir(parents=True)
    torch.save(torch.nn.Linear(768, 1).state_dict(), root / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth")
    return root, clip, raft


def test_torchscript_clip_archive_loads_through_openai_loader(weights):
    import open_clip

    root, clip, _ = weights
    loaded = load_openai_clip(root / "clip_model" / "ViT-B-32.pt", torch.device("cpu"))
    # every weight is the archive's, kept as OpenAI's fp16 (VBench's archives are fp16 already)
    want = clip.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k, v in got.items():
        assert torch.equal(v, want[k]) or torch.equal(v, want[k].half().float()), k
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tok = open_clip.get_tokenizer("ViT-B-32-quickgelu")(["a cat", "Van Gogh style"])
    with torch.no_grad():  # tolerance: fp16 rounding of the weights
        assert torch.allclose(loaded.encode_image(x), clip.encode_image(x), atol=5e-3)
        assert torch.allclose(loaded.encode_text(tok), clip.encode_text(tok), atol=5e-3)
    bb = load_backbone("clip-vitb32", LoadContext(root, torch.device("cpu")))
    assert bb.label == "vbench:clip-vitb32" and bb.encode_text(["a cat"]).shape == (1, 32)
    bf16 = load_backbone("clip-vitb32", LoadContext(root, torch.device("cpu"), dtype=torch.bfloat16))
    frames = torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8)
    f32, f16 = bb.features(frames), bf16.features(frames)
    assert f16.dtype == torch.float32 and torch.allclose(f32, f16, atol=0.05) and not torch.equal(f32, f16)


def test_raft_things_maps_onto_torchvision_raft(weights):
    root, _, raft = weights
    bb = load_backbone("raft-things", LoadContext(root, torch.device("cpu")))
    assert bb.label == "vbench:raft-things"
    ref = raft_backbone_from_model(raft, "ref", iters=2)
    mine = raft_backbone_from_model(load_raft_things(root / "raft_model" / "models" / "raft-things.pth"), "mine", iters=2)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (1, 3, 128, 136), dtype=torch.uint8, generator=g)
    b = torch.roll(a, 3, dims=-1)
    assert torch.equal(mine.magnitudes(a, b), ref.magnitudes(a, b))  # same weights, same network: identical flow
    # every princeton key is used (strict load), including BN statistics; norm3 duplicates are dropped
    sd = torch.load(root / "raft_model" / "models" / "raft-things.pth", weights_only=True)
    assert any(".norm3." in k for k in sd) and all(k.startswith("module.") for k in sd)


def test_raft_things_parity_with_vbench_raft(weights, monkeypatch):
    """Our raft-things backbone equals VBench's own RAFT (vbench/third_party/RAFT) with the same checkpoint."""
    import argparse
    import sys

    root, _, _ = weights
    monkeypatch.syspath_prepend(str(reference_source("MMALIGN_VBENCH_SRC", "vbench") / "vbench" / "third_party" / "RAFT"))
    for name in [m for m in sys.modules if m == "core" or m.startswith("core.")]:
        monkeypatch.delitem(sys.modules, name)
    from core.raft import RAFT  # type: ignore[import-not-found]
    from core.utils_core.utils import InputPadder  # type: ignore[import-not-found]

    ref = torch.nn.DataParallel(RAFT(argparse.Namespace(small=False, mixed_precision=False, alternate_corr=False)))
    ref.load_state_dict(torch.load(root / "raft_model" / "models" / "raft-things.pth", weights_only=True))
    ref = ref.module.eval()
    mine = raft_backbone_from_model(load_raft_things(root / "raft_model" / "models" / "raft-things.pth"), "mine", iters=3)
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 256, (1, 3, 130, 140), dtype=torch.uint8, generator=g)
    b = torch.roll(a, (2, -3), dims=(-2, -1))
    with torch.no_grad():
        x, y = InputPadder(a.shape).pad(a.float(), b.float())  # dynamic_degree.py / static_filter.py
        _, flow = ref(x, y, iters=3, test_mode=True)
    want = flow.square().sum(1).sqrt()
    assert want.abs().max() > 0.1
    assert torch.allclose(mine.magnitudes(a, b), want, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# custom input on ordinary videos, with one corrupt weight file


@pytest.fixture(scope="module")
def ordinary_videos(tmp_path_factory) -> Path:
    """Videos with names unrelated to any suite: mp4 at 24 fps (large enough for RAFT), webm, gif."""
    folder = tmp_path_factory.mktemp("ordinary")
    g = torch.Generator().manual_seed(0)
    for name, (t, h, w, fps) in {"holiday clip-3": (6, 128, 160, 24.0), "IMG_0042": (5, 64, 48, 10.0),
                                 "loop": (4, 40, 40, 8.0)}.items():
        base = torch.rand(1, 3, h // 4, w // 4, generator=g)
        frames = torch.stack([torch.nn.functional.interpolate(torch.roll(base, k, -1), size=(h, w))[0] for k in range(t)])
        ext = {"IMG_0042": "webm", "loop": "gif"}.get(name, "mp4")
        save_media(VideoBatch(frames[None], fps=fps), folder, [name], format=ext)
    return folder


def test_custom_suite_on_ordinary_videos_with_a_corrupt_weight_file(weights, ordinary_videos, tmp_path):
    root, _, _ = weights
    files = sorted(p.name for p in ordinary_videos.iterdir())
    assert files == ["IMG_0042.webm", "holiday clip-3.mp4", "loop.gif"]
    suite = custom_suite()
    run = run_benchmark(suite, ordinary_videos, tmp_path / "out", weights_dir=root, progress=False,
                        backbones={"flow": ["raft-things", "horn-schunck"]})  # VBench's RAFT first
    paths = write_report(run, name="custom", charts=False)
    res = json.loads(paths["results"].read_text())
    dims = res["dimensions"]
    assert res["n_videos"] == 3 and not res["skipped"] and res["missing_files"] == []
    # the corrupt ViT-L/14 archive: aesthetic_quality says why, the run went on
    assert dims["aesthetic_quality"]["status"] == "unavailable"
    assert "failed to load" in dims["aesthetic_quality"]["reason"]
    assert "weights not found" in dims["subject_consistency"]["reason"]  # no DINO file
    # the others have numbers, each with the backbone that made it
    for d in ("background_consistency", "temporal_flickering", "motion_smoothness", "dynamic_degree"):
        assert dims[d]["status"] == "ok" and dims[d]["raw"] is not None, d
    assert dims["background_consistency"]["backbone"] == "vbench:clip-vitb32"
    assert dims["background_consistency"]["comparable_with_vbench"]
    assert dims["dynamic_degree"]["backbone"] == "vbench:raft-things"
    assert dims["motion_smoothness"]["backbone"] == "substitute:linear-interp"
    assert not dims["motion_smoothness"]["comparable_with_vbench"]
    # temporal_flickering scores every video it is given (no hidden static filter)
    assert dims["temporal_flickering"]["n_videos"] == 3
    # the two videos below 128 px are too small for torchvision's RAFT: named per video, not an abort
    assert dims["dynamic_degree"]["n_videos"] == 1 and len(dims["dynamic_degree"]["failures"]) == 2
    assert all("128" in f["error"] for f in dims["dynamic_degree"]["failures"])
    # no headline number with missing dimensions; the partial one is named as such
    assert res["scores"]["quality"] is None and res["scores"]["total"] is None
    assert res["scores"]["quality_present"] is not None
    assert set(res["scores"]["missing"]["quality"]) == {"subject_consistency", "aesthetic_quality", "imaging_quality"}
    # VBench-format per-video results
    ev = json.loads(paths["eval_results"].read_text())
    agg, rows = ev["background_consistency"]
    assert isinstance(agg, float) and {Path(r["video_path"]).name for r in rows} == set(files)
    assert {"video_sim", "cnt_per_video"} <= set(rows[0])
    assert "aesthetic_quality" not in ev
    html = paths["html"].read_text()
    assert "vbench:clip-vitb32" in html and "substitute:linear-interp" in html and "failed to load" in html


def test_strict_makes_a_missing_backbone_fatal(weights, ordinary_videos, tmp_path):
    from mmalign.bench.backbones import BackboneMissing

    root, _, _ = weights
    with pytest.raises(BackboneMissing, match="aesthetic_quality.*failed to load"):
        run_benchmark(custom_suite(), ordinary_videos, tmp_path / "out", ["background_consistency", "aesthetic_quality"],
                      weights_dir=root, progress=False, strict=True)


def test_custom_suite_prompts_and_refusals(tmp_path, ordinary_videos):
    assert prompt_from_filename("/x/a cat running-12.mp4") == "a cat running"
    assert prompt_from_filename("IMG_0042.webm") == "IMG_0042"
    items, missing = custom_suite().items(ordinary_videos, ["temporal_flickering", "overall_consistency"])
    assert {it.prompt for it in items} == {"holiday clip", "IMG_0042", "loop"} and missing == []
    (tmp_path / "prompts.json").write_text(json.dumps({str(ordinary_videos / "loop.gif"): "a spinning wheel"}))
    items, _ = custom_suite(tmp_path / "prompts.json").items(ordinary_videos, ["overall_consistency"])
    assert {it.prompt for it in items} >= {"a spinning wheel", "holiday clip"}
    with pytest.raises(ConfigError, match="auxiliary info"):
        custom_suite().items(ordinary_videos, ["object_class"])


def test_cli_custom_input_and_static_filter(weights, ordinary_videos, tmp_path):
    from mmalign.cli import get_app

    root, _, _ = weights
    out = tmp_path / "run"
    r = CliRunner().invoke(get_app(), ["bench", "--custom-input", "--videos", str(ordinary_videos), "--out", str(out),
                                       "--weights", str(root), "--quiet", "--dimensions",
                                       "temporal_flickering,background_consistency,aesthetic_quality"])
    assert r.exit_code == 0, r.output
    assert "vbench:clip-vitb32" in r.output and "failed to load" in r.output
    assert "quality: null (missing" in r.output and "quality_present" in r.output
    assert json.loads((out / "results.json").read_text())["suite"] == "custom"
    # the static filter is its own step: a still video is kept, a moving one is not
    vids = tmp_path / "flicker"
    still = torch.full((1, 5, 3, 32, 32), 0.5)
    moving = torch.zeros(1, 5, 3, 32, 32)
    for t in range(5):
        moving[0, t, :, 8:16, 4 + 5 * t: 12 + 5 * t] = 1.0
    save_media(VideoBatch(still, fps=8.0), vids, ["a still lake-0"])
    save_media(VideoBatch(moving, fps=8.0), vids, ["a still lake-1"])
    (vids / "a still lake-2.mp4").write_bytes(b"not a video")  # reported, never aborts the filter
    r = CliRunner().invoke(get_app(), ["bench", "static-filter", "--videos", str(vids), "--out", str(tmp_path / "kept"),
                                       "--weights", str(tmp_path / "no_weights"), "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "kept" / "static_filter.json").read_text())
    assert summary["backbone"] == "substitute:horn-schunck"  # no raft-things.pth there: labelled fallback
    assert [d.get("static") for d in summary["decisions"]] == [True, False, None]
    assert "error" in summary["decisions"][2]
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.mp4")) == ["a still lake-0.mp4"]


def test_dtype_reaches_the_backbones_and_the_results(weights, ordinary_videos, tmp_path):
    root, _, _ = weights
    runs = {}
    for dtype in ("fp32", "bf16"):  # the same output folder: records and caches are kept per dtype
        runs[dtype] = run_benchmark(custom_suite(), ordinary_videos, tmp_path / "out", ["background_consistency"],
                                    weights_dir=root, dtype=dtype, progress=False)
    res = {k: build_results(r) for k, r in runs.items()}
    assert res["fp32"]["dtype"] == "fp32" and res["bf16"]["dtype"] == "bf16"
    a, b = (res[k]["dimensions"]["background_consistency"]["raw"] for k in ("fp32", "bf16"))
    assert a != b and a == pytest.approx(b, abs=0.02)  # bf16 features: close, not identical
    assert sorted(p.name.split(".")[1] for p in (tmp_path / "out" / "cache").iterdir()) == ["bf16"] * 3 + ["fp32"] * 3
    with pytest.raises(ConfigError, match="dtype"):
        run_benchmark(custom_suite(), ordinary_videos, tmp_path / "x", ["temporal_flickering"], dtype="fp8", progress=False)


def test_aesthetic_from_vbench_files(tmp_path, ordinary_videos):
    """clip_model/ViT-L-14.pt (a TorchScript archive) + the LAION head: score = Linear(normalize(emb))/10 per frame."""
    clip = tiny_openai_clip()
    save_torchscript_clip(clip, tmp_path / "clip_model" / "ViT-L-14.pt")
    head = torch.nn.Linear(32, 1)
    (tmp_path / "aesthetic_model" / "emb_reader").mkdir(parents=True)
    torch.save(head.state_dict(), tmp_path / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth")
    run = run_benchmark(custom_suite(), ordinary_videos, tmp_path / "out", ["aesthetic_quality"], weights_dir=tmp_path,
                        progress=False)
    res = build_results(run)["dimensions"]["aesthetic_quality"]
    assert res["backbone"] == "vbench:laion-aesthetic" and res["comparable_with_vbench"]
    ref = clip.half().float()  # the archive's weights as open_clip's OpenAI loader keeps them
    per_video = []
    for rec in run.records:
        frames, _ = decode(rec["path"])
        with torch.no_grad():
            emb = torch.nn.functional.normalize(ref.encode_image(clip_transform(frames)), dim=-1)
            per_video.append(float((head(emb) / 10).mean()))
    assert res["raw"] == pytest.approx(sum(per_video) / len(per_video), abs=2e-3)  # fp16-rounded weights
