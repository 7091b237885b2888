"""AMT-S for motion_smoothness (Vchitect/VBench@45e79ec ``vbench/third_party/amt``, ``motion_smoothness.py``):
VBench's checkpoint layout loads strictly, the network equals VBench's own module on random weights
(with its wheel), and the dimension runs end to end on the ``vbench:amt-s`` backbone."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

from mmalign.bench import formulas as fm
from mmalign.bench.amt import AMTS
from mmalign.bench.backbones import LoadContext, load_backbone
from mmalign.bench.report import build_results
from mmalign.bench.runner import decode, run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.errors import InputError
from mmalign.media import VideoBatch, save_media
from _reference_src import reference_source


def _save(model: torch.nn.Module, root: Path) -> Path:
    path = root / "amt_model" / "amt-s.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)  # the released checkpoint's layout
    return root


def test_amt_s_size_and_checkpoint_layout(tmp_path):
    torch.manual_seed(0)
    model = AMTS()
    assert sum(p.numel() for p in model.parameters()) == 2_990_543  # AMT-S: 2.99M parameters (Li et al. 2023, Table 1)
    bb = load_backbone("amt-s", LoadContext(_save(model, tmp_path), torch.device("cpu")))
    assert bb.label == "vbench:amt-s"
    small = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(InputError, match="128"):
        bb.midpoints(small, small)


def test_amt_s_parity_with_vbench_module(monkeypatch):
    src = reference_source("MMALIGN_VBENCH_SRC", "vbench") / "vbench"
    pkg = types.ModuleType("vbench")
    pkg.__path__ = [str(src)]  # import vbench.third_party.amt without vbench/__init__.py (CUDA-only imports)
    monkeypatch.setitem(sys.modules, "vbench", pkg)
    for name in [m for m in sys.modules if m.startswith("vbench.")]:
        monkeypatch.delitem(sys.modules, name)
    ref_mod = importlib.import_module("vbench.third_party.amt.networks.AMT-S")
    torch.manual_seed(0)
    ref = ref_mod.Model(corr_radius=3, corr_lvls=4, num_flows=3).eval()
    ours = AMTS().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 128, 144, generator=g)
    b = torch.roll(a, (1, 3), dims=(-2, -1))
    embt = torch.full((1, 1, 1, 1), 0.5)
    with torch.no_grad():
        want = ref(a, b, embt, scale_factor=1.0, eval=True)["imgt_pred"]
        got = ours(a, b, embt)
    assert want.std() > 0.05 and torch.allclose(got, want, atol=1e-4)


def test_motion_smoothness_on_amt(tmp_path):
    torch.manual_seed(0)
    root = _save(AMTS(), tmp_path / "w")
    entry = Entry("a dog running", ("motion_smoothness",))
    g = torch.Generator().manual_seed(0)
    save_media(VideoBatch(torch.rand(1, 5, 3, 120, 136, generator=g), fps=8.0), tmp_path / "v", ["a dog running-0"])
    suite = Suite(name="ms", modality="video", entries=[entry], dimensions=["motion_smoothness"], samples_per_prompt=1,
                  backbones={"interp": ["amt-s", "linear-interp"]})
    run = run_benchmark(suite, tmp_path / "v", tmp_path / "out", weights_dir=root, progress=False)
    res = build_results(run)["dimensions"]["motion_smoothness"]
    assert res["backbone"] == "vbench:amt-s" and res["comparable_with_vbench"]
    frames, _ = decode(str(tmp_path / "v" / "a dog running-0.mp4"))
    bb = load_backbone("amt-s", LoadContext(root, torch.device("cpu")))
    even = frames[0::2]  # 0, 2, 4 -> midpoints predict frames 1 and 3 (padded to 128x144 and back)
    pred = bb.midpoints(even[:-1], even[1:])
    assert pred.shape == (2, 3, 120, 136) and pred.dtype == torch.uint8
    assert res["raw"] == pytest.approx(fm.motion_smoothness(frames[1::2], pred), abs=1e-9)
