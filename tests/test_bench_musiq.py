"""MUSIQ for imaging_quality without pyiqa (Vchitect/VBench@45e79ec ``vbench/imaging_quality.py``; pyiqa 0.1.x
``archs/musiq_arch.py``): checkpoint layout, multi-scale patches, parity with pyiqa's own module on random
weights (with its wheel), and the dimension end to end on the ``vbench:musiq-spaq`` backbone."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from mmalign.bench.backbones import LoadContext, load_backbone, musiq_preprocess
from mmalign.bench.musiq import MUSIQ, hashed_positions, multiscale_patches
from mmalign.bench.report import build_results
from mmalign.bench.runner import decode, run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.media import VideoBatch, save_media
from _reference_src import reference_source


def random_musiq(seed: int = 0) -> MUSIQ:
    torch.manual_seed(seed)
    model = MUSIQ()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        model.head.bias.fill_(50.0)  # SPAQ scores live on 0-100
    return model.eval()


def _save(model: MUSIQ, root: Path) -> Path:
    path = root / "pyiqa_model" / "musiq_spaq_ckpt-358bb6af.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return root


def test_multiscale_patch_layout():
    # 10x10 hash grid over a 3x7 patch grid: nearest-neighbour rows (0, 3, 6) and columns (0, 1, 2, 4, 5, 7, 8)
    assert hashed_positions(10, 3, 7).reshape(3, 7)[:, 0].tolist() == [0, 30, 60]
    assert hashed_positions(10, 3, 7)[:7].tolist() == [0, 1, 2, 4, 5, 7, 8]
    x = torch.rand(2, 3, 100, 150)
    patches, pos, scale, mask = multiscale_patches(x)
    # 224-scale: 150x224 -> 5x7 patches padded to 49; 384-scale: 256x384 -> 8x12 = 96 padded to 144; original: 4x5 = 20
    assert patches.shape == (2, 49 + 144 + 20, 3 * 32 * 32)
    assert mask[0, :49].sum() == 35 and mask[0, 49:193].sum() == 96 and mask[0, 193:].all()
    assert scale[0, :35].eq(0).all() and scale[0, 49:145].eq(1).all() and scale[0, 193:].eq(2).all()
    assert patches[:, 35:49].abs().sum() == 0  # the padding is zeros


def test_musiq_checkpoint_loads_and_scores(tmp_path):
    model = random_musiq()
    bb = load_backbone("musiq-spaq", LoadContext(_save(model, tmp_path), torch.device("cpu")))
    assert bb.label == "vbench:musiq-spaq"
    frames = torch.randint(0, 256, (2, 3, 72, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = bb.features(frames)[:, 0]
    with torch.no_grad():
        want = torch.stack([model(musiq_preprocess(f)[None])[0] for f in frames])
    assert torch.allclose(got, want, rtol=0, atol=1e-4) and got[0] != got[1]
    assert musiq_preprocess(torch.zeros(3, 720, 1280, dtype=torch.uint8)).shape == (3, 288, 512)  # longer side 512


def test_musiq_parity_with_pyiqa_module(monkeypatch):
    """pyiqa's MUSIQ (imported module by module, its package __init__ files skipped) and ours, same weights."""
    root = reference_source("MMALIGN_PYIQA_SRC", "pyiqa") / "pyiqa"
    for name in ("pyiqa", "pyiqa.archs", "pyiqa.utils", "pyiqa.data"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root / name.replace("pyiqa", "", 1).lstrip(".").replace(".", "/"))]
        monkeypatch.setitem(sys.modules, name, pkg)
    spec = importlib.util.spec_from_file_location("pyiqa.matlab_utils.padding", root / "matlab_utils" / "padding.py")
    padding = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(padding)
    monkeypatch.setitem(sys.modules, "pyiqa.matlab_utils", padding)  # the names musiq_arch takes from the package
    for name in [m for m in sys.modules if m.startswith("pyiqa.archs.") or m.startswith("pyiqa.utils.") or m.startswith("pyiqa.data.")]:
        monkeypatch.delitem(sys.modules, name)
    arch = importlib.import_module("pyiqa.archs.musiq_arch")
    ref = arch.MUSIQ(pretrained=False)
    ref.training = False  # as VBench's imaging_quality.py (sub-modules stay in train mode; dropout rates are 0)
    ours = MUSIQ().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05, generator=None)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert want.abs().max() > 0.01 and torch.allclose(got, want.reshape(got.shape), atol=1e-4)


def test_imaging_quality_on_musiq(tmp_path):
    model = random_musiq(1)
    root = _save(model, tmp_path / "w")
    entry = Entry("a lake", ("imaging_quality",))
    save_media(VideoBatch(torch.rand(1, 3, 3, 40, 56, generator=torch.Generator().manual_seed(0)), fps=8.0), tmp_path / "v",
               ["a lake-0"])
    suite = Suite(name="iq", modality="video", entries=[entry], dimensions=["imaging_quality"], samples_per_prompt=1,
                  backbones={"iqa": ["musiq-spaq"]})
    run = run_benchmark(suite, tmp_path / "v", tmp_path / "out", weights_dir=root, progress=False)
    res = build_results(run)["dimensions"]["imaging_quality"]
    assert res["backbone"] == "vbench:musiq-spaq" and res["comparable_with_vbench"]
    frames, _ = decode(str(tmp_path / "v" / "a lake-0.mp4"))
    with torch.no_grad():
        per_video = float(torch.stack([model(musiq_preprocess(f)[None])[0] for f in frames]).mean())
    assert run.records[0]["dims"]["imaging_quality"]["video_results"] == pytest.approx(per_video, rel=1e-5)  # 0-100
    assert res["raw"] == pytest.approx(per_video / 100, rel=1e-5)  # the aggregate is /100
