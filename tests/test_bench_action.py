"""human_action with VBench's UMT checkpoint layout in transformers' VideoMAE classes (Vchitect/VBench@45e79ec
``vbench/human_action.py``, ``third_party/umt/models/modeling_finetune.py``): key mapping, positions,
preprocessing, the top-5 / 0.85 rule, and the dimension end to end, on a tiny random UMT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmalign.bench.action import action_correct, umt_position_table, umt_transform
from mmalign.bench.backbones import LoadContext, load_backbone
from mmalign.bench.kinetics400 import KINETICS400_VBENCH
from mmalign.bench.report import build_results
from mmalign.bench.runner import run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.media import VideoBatch, save_media
from _reference_src import reference_source

DIM, MLP, FRAMES = 64, 128, 16  # one 64-wide block (UMT heads = width // 64), 16 frames of 224 px


def tiny_umt_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random checkpoint with UMT's key names and shapes (``vit_large_patch16_224`` at width 64, depth 1)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    return {
        "patch_embed.proj.weight": r(DIM, 3, 1, 16, 16), "patch_embed.proj.bias": r(DIM),
        "blocks.0.norm1.weight": 1 + r(DIM), "blocks.0.norm1.bias": r(DIM),
        "blocks.0.attn.q_bias": r(DIM), "blocks.0.attn.v_bias": r(DIM), "blocks.0.attn.qkv.weight": r(3 * DIM, DIM),
        "blocks.0.attn.proj.weight": r(DIM, DIM), "blocks.0.attn.proj.bias": r(DIM),
        "blocks.0.norm2.weight": 1 + r(DIM), "blocks.0.norm2.bias": r(DIM),
        "blocks.0.mlp.fc1.weight": r(MLP, DIM), "blocks.0.mlp.fc1.bias": r(MLP),
        "blocks.0.mlp.fc2.weight": r(DIM, MLP), "blocks.0.mlp.fc2.bias": r(DIM),
        "fc_norm.weight": 1 + r(DIM), "fc_norm.bias": r(DIM),
        "head.weight": r(400, DIM, s=0.5), "head.bias": r(400),
    }


def reference_umt(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """UMT's forward written from ``modeling_finetune.py`` (one block, one head): x ``[B, 3, T, H, W]`` → logits."""
    ln = lambda t, n: F.layer_norm(t, (DIM,), state[f"{n}.weight"], state[f"{n}.bias"], eps=1e-6)  # noqa: E731
    tok = F.conv3d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=(1, 16, 16))
    tok = tok.flatten(2).transpose(1, 2) + umt_position_table(FRAMES, DIM)  # [B, N, C]
    h = ln(tok, "blocks.0.norm1")
    bias = torch.cat([state["blocks.0.attn.q_bias"], torch.zeros(DIM), state["blocks.0.attn.v_bias"]])
    q, k, v = F.linear(h, state["blocks.0.attn.qkv.weight"], bias).chunk(3, dim=-1)
    att = ((q * DIM**-0.5) @ k.transpose(-2, -1)).softmax(-1)
    tok = tok + F.linear(att @ v, state["blocks.0.attn.proj.weight"], state["blocks.0.attn.proj.bias"])
    h = F.gelu(F.linear(ln(tok, "blocks.0.norm2"), state["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc1.bias"]))
    tok = tok + F.linear(h, state["blocks.0.mlp.fc2.weight"], state["blocks.0.mlp.fc2.bias"])
    return F.linear(ln(tok.mean(1), "fc_norm"), state["head.weight"], state["head.bias"])


def _save(state: dict[str, torch.Tensor], root: Path) -> Path:
    path = root / "umt_model" / "l16_ptk710_ftk710_ftk400_f16_res224.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return root


def test_umt_checkpoint_in_videomae_matches_reference_forward(tmp_path):
    state = tiny_umt_state()
    bb = load_backbone("umt", LoadContext(_save(state, tmp_path), torch.device("cpu")))
    assert bb.label == "vbench:umt" and bb.labels == KINETICS400_VBENCH and bb.labels[0] == "riding a bike"
    x = torch.randn(1, 3, FRAMES, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference_umt(state, x)
        got = bb.model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
    assert want.abs().max() > 0.1 and torch.allclose(got, want, atol=1e-4)
    # a checkpoint that carries its own (fine-tuned) positions uses them
    pos = torch.randn(1, FRAMES * 196, DIM, generator=torch.Generator().manual_seed(2)) * 0.1
    bb2 = load_backbone("umt", LoadContext(_save({**state, "pos_embed": pos}, tmp_path / "b"), torch.device("cpu")))
    assert torch.equal(bb2.model.videomae.embeddings.position_embeddings, pos)


def test_umt_positions_and_preprocessing():
    t8 = umt_position_table(8, 6)
    assert t8.shape == (1, 8 * 196, 6)
    # sinusoid of position n, channel j: sin/cos(n / 10000^(2⌊j/2⌋/d))
    n = 200
    assert t8[0, n, 2].item() == pytest.approx(math.sin(n / 10000 ** (2 / 6)), abs=1e-6)
    assert t8[0, n, 3].item() == pytest.approx(math.cos(n / 10000 ** (2 / 6)), abs=1e-6)
    # linear in time, align_corners=False: frame i samples 8-frame time 0.5·i − 0.25 (clamped)
    t16 = umt_position_table(16, 6).reshape(16, 196, 6)
    f8 = t8.reshape(8, 196, 6)
    assert torch.allclose(t16[0], f8[0]) and torch.allclose(t16[15], f8[7])
    assert torch.allclose(t16[1], 0.75 * f8[0] + 0.25 * f8[1], atol=1e-6)
    frames = torch.arange(240 * 320, dtype=torch.float32).reshape(1, 1, 240, 320).expand(2, 3, 240, 320)
    frames = (frames % 251).to(torch.uint8)
    x = umt_transform(frames)
    assert x.shape == (2, 3, 224, 224)
    # 240x320 -> 256x341 (int(256*320/240)), crop offsets round(16)=16 and round(58.5)=58 (banker's)
    up = F.interpolate(frames.float(), size=(256, 341), mode="bilinear", align_corners=False).round()
    want = (up[..., 16:240, 58:282] / 255.0 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(x, want, atol=1e-6)


def test_top5_threshold_rule():
    labels = tuple(f"c{i}" for i in range(10))
    logits = torch.full((10,), -5.0)
    logits[3] = math.log(0.84996 / (1 - 0.84996))  # rounds to 0.85: kept
    logits[4] = math.log(0.84994 / (1 - 0.84994))  # rounds to 0.8499: dropped
    assert action_correct(logits, labels, "c3") and not action_correct(logits, labels, "c4")
    logits[:6] = 9.0  # six confident classes: only the top 5 count
    assert sum(action_correct(logits, labels, f"c{i}") for i in range(6)) == 5


def test_umt_parity_with_vbench_module(tmp_path, monkeypatch):
    """The same random checkpoint in VBench's own UMT module and in our VideoMAE: logits to 1e-4."""
    import importlib.util
    import sys
    from functools import partial

    src = reference_source("MMALIGN_VBENCH_SRC", "vbench") / "vbench" / "third_party" / "umt" / "models" / "modeling_finetune.py"
    spec = importlib.util.spec_from_file_location("vbench_umt_finetune", src)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vbench_umt_finetune", mod)  # timm's register_model looks the module up
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    ref = mod.VisionTransformer(patch_size=16, embed_dim=DIM, depth=1, num_heads=1, mlp_ratio=MLP / DIM, qkv_bias=True,
                                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_classes=400, all_frames=FRAMES,
                                tubelet_size=1, use_mean_pooling=True, init_scale=0.001).eval()
    ref.load_state_dict({**tiny_umt_state(), "pos_embed": ref.pos_embed.detach()})
    bb = load_backbone("umt", LoadContext(_save(ref.state_dict(), tmp_path), torch.device("cpu")))
    x = torch.randn(1, 3, FRAMES, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(bb.model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, ref(x), atol=1e-4)


def test_human_action_dimension_end_to_end(tmp_path):
    state = tiny_umt_state()
    state["head.bias"] = torch.full((400,), -6.0)
    state["head.bias"][0] = 8.0  # every video is confidently "riding a bike" (index 0)
    root = _save(state, tmp_path / "w")
    entries = [Entry("A person is riding a bike", ("human_action",)), Entry("A person is marching", ("human_action",))]
    g = torch.Generator().manual_seed(0)
    for e in entries:
        save_media(VideoBatch(torch.rand(1, 20, 3, 64, 80, generator=g), fps=8.0), tmp_path / "v", [f"{e.prompt}-0"])
    suite = Suite(name="act", modality="video", entries=entries, dimensions=["human_action"], samples_per_prompt=1,
                  backbones={"action": ["umt"]})
    run = run_benchmark(suite, tmp_path / "v", tmp_path / "out", weights_dir=root, progress=False)
    res = build_results(run)["dimensions"]["human_action"]
    assert res["raw"] == pytest.approx(0.5) and res["backbone"] == "vbench:umt" and res["comparable_with_vbench"]
    per = {Path(r["path"]).name: r["dims"]["human_action"] for r in run.records}
    assert per["A person is riding a bike-0.mp4"]["video_results"] is True
    assert per["A person is marching-0.mp4"]["video_results"] is False
    assert per["A person is riding a bike-0.mp4"]["cor_num_per_video"] == 1
