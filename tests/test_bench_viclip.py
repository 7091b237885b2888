"""ViCLIP for temporal_style / overall_consistency (Vchitect/VBench@45e79ec ``vbench/third_party/ViCLIP``):
VBench's checkpoint layout loads strictly into our towers, whose outputs equal a reference forward
written from ``viclip_vision.py`` / ``viclip_text.py`` (and VBench's own modules when its wheel is given),
and the dimensions run end to end on the ``vbench:viclip`` backbone."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmalign.bench.backbones import LoadContext, load_backbone
from mmalign.bench.report import build_results
from mmalign.bench.runner import decode, run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.bench.viclip import clip_transform_uint8
from mmalign.media import VideoBatch, save_media
from _reference_src import reference_source

W, TW, OUT, FRAMES, CTX = 64, 64, 32, 8, 32  # one 64-wide layer per tower (heads = width // 64)


def tiny_viclip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ``model`` dict with ViCLIP's key names and shapes (ViT-L/14 → width 64, depth 1)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    def block(prefix: str, w: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.ln_1.weight": 1 + r(w), f"{prefix}.ln_1.bias": r(w),
                f"{prefix}.attn.in_proj_weight": r(3 * w, w, s=0.2), f"{prefix}.attn.in_proj_bias": r(3 * w),
                f"{prefix}.attn.out_proj.weight": r(w, w, s=0.2), f"{prefix}.attn.out_proj.bias": r(w),
                f"{prefix}.ln_2.weight": 1 + r(w), f"{prefix}.ln_2.bias": r(w),
                f"{prefix}.mlp.c_fc.weight": r(4 * w, w, s=0.2), f"{prefix}.mlp.c_fc.bias": r(4 * w),
                f"{prefix}.mlp.c_proj.weight": r(w, 4 * w, s=0.2), f"{prefix}.mlp.c_proj.bias": r(w)}

    v, t = "vision_encoder", "text_encoder"
    return {
        f"{v}.conv1.weight": r(W, 3, 1, 14, 14, s=0.1), f"{v}.class_embedding": r(W, s=0.5),
        f"{v}.positional_embedding": r(257, W, s=0.5), f"{v}.temporal_positional_embedding": r(1, FRAMES, W, s=0.5),
        f"{v}.ln_pre.weight": 1 + r(W), f"{v}.ln_pre.bias": r(W), **block(f"{v}.transformer.resblocks.0", W),
        f"{v}.ln_post.weight": 1 + r(W), f"{v}.ln_post.bias": r(W), f"{v}.proj": r(W, OUT, s=0.2),
        f"{t}.token_embedding.weight": r(49408, TW, s=0.5), f"{t}.positional_embedding": r(CTX, TW, s=0.1),
        **block(f"{t}.transformer.resblocks.0", TW), f"{t}.ln_final.weight": 1 + r(TW), f"{t}.ln_final.bias": r(TW),
        f"{t}.text_projection": r(TW, OUT, s=0.2), "temp": torch.tensor(0.01),
    }


def _block(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One OpenAI-CLIP residual block (sequence-first), QuickGELU MLP."""
    w = x.shape[-1]
    h = F.layer_norm(x, (w,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"])
    a, _ = F.multi_head_attention_forward(h, h, h, w, w // 64, sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"],
                                          None, None, False, 0.0, sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"],
                                          training=False, need_weights=False, attn_mask=mask)
    x = x + a
    h = F.linear(F.layer_norm(x, (w,), sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"]), sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"])
    return x + F.linear(h * torch.sigmoid(1.702 * h), sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"])


def reference_video(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``viclip_vision.py::VisionTransformer.forward`` for x ``[B, T, 3, 224, 224]`` (normalised)."""
    sd = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    b, t = x.shape[:2]
    y = F.conv3d(x.permute(0, 2, 1, 3, 4), sd["conv1.weight"], stride=(1, 14, 14))  # [B, C, T, 16, 16]
    y = y.permute(0, 2, 3, 4, 1).reshape(b * t, 256, W)
    y = torch.cat([sd["class_embedding"].expand(b * t, 1, W), y], 1) + sd["positional_embedding"]
    cls = y[:b, :1]
    y = y[:, 1:].reshape(b, t, 256, W).permute(0, 2, 1, 3).reshape(b * 256, t, W)  # (b t) n m -> (b n) t m
    y = (y + sd["temporal_positional_embedding"]).reshape(b, 256 * t, W)  # (b n) t m -> b (n t) m
    y = F.layer_norm(torch.cat([cls, y], 1), (W,), sd["ln_pre.weight"], sd["ln_pre.bias"]).transpose(0, 1)
    y = _block(sd, "transformer.resblocks.0", y)
    y = F.layer_norm(y, (W,), sd["ln_post.weight"], sd["ln_post.bias"])
    return y[0] @ sd["proj"]


def reference_text(state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """``viclip_text.py::CLIP_TEXT.forward`` (causal mask, features at the argmax = EOT token)."""
    sd = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    x = (F.embedding(ids, sd["token_embedding.weight"]) + sd["positional_embedding"]).transpose(0, 1)
    mask = torch.full((CTX, CTX), float("-inf")).triu_(1)
    x = F.layer_norm(_block(sd, "transformer.resblocks.0", x, mask).transpose(0, 1), (TW,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ sd["text_projection"]


def _save(state: dict[str, torch.Tensor], root: Path) -> Path:
    path = root / "ViCLIP" / "ViClip-InternVid-10M-FLT.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return root


def test_viclip_checkpoint_loads_and_matches_reference(tmp_path):
    state = tiny_viclip_state()
    bb = load_backbone("viclip", LoadContext(_save(state, tmp_path), torch.device("cpu")))
    assert bb.label == "vbench:viclip"
    frames = torch.randint(0, 256, (FRAMES, 3, 90, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = clip_transform_uint8(frames)[None]
    with torch.no_grad():
        want = F.normalize(reference_video(state, x), dim=-1)[0]
    got = bb.encode_video(frames)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(bb.encode_video(frames.flip(0)), got, atol=1e-3)  # frame order matters (temporal positions)
    long = "a " + "very " * 40 + "long prompt"
    ids = bb.tokenizer(["a cat", long])
    assert ids.shape == (2, CTX) and ids[1, -1] == 49407  # truncated to 32 tokens, EOT last, as ViCLIP's tokenize
    with torch.no_grad():
        assert torch.allclose(bb.encode_text(["a cat", long]), F.normalize(reference_text(state, ids.long()), dim=-1), atol=1e-5)
    # the frames reach the model as VBench's uint8 clip_transform gives them: resized values rounded to uint8
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    levels = (x[0] * std + mean) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_viclip_parity_with_vbench_modules(tmp_path, monkeypatch):
    """VBench's own ViCLIP towers (eval mode) and ours on the same random checkpoint, to 1e-4."""
    import importlib.util

    pkg = reference_source("MMALIGN_VBENCH_SRC", "vbench") / "vbench" / "third_party" / "ViCLIP"
    if "pkg_resources" not in sys.modules:  # viclip_text.py imports it for a torch-version check only
        stub = types.ModuleType("pkg_resources")
        stub.packaging = types.SimpleNamespace(version=types.SimpleNamespace(parse=lambda v: tuple(map(int, v.split("+")[0].split(".")[:2]))))
        monkeypatch.setitem(sys.modules, "pkg_resources", stub)
    # simple_tokenizer.py reads OpenAI's BPE from vbench.utils.CACHE_DIR (it would wget it): stub the
    # package with a cache holding open_clip's copy of the same file
    import shutil

    import open_clip

    cache = tmp_path / "vbench_cache"
    (cache / "ViCLIP").mkdir(parents=True)
    shutil.copy(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", cache / "ViCLIP")
    monkeypatch.setitem(sys.modules, "vbench", types.SimpleNamespace(__path__=[]))
    monkeypatch.setitem(sys.modules, "vbench.utils", types.SimpleNamespace(CACHE_DIR=str(cache)))
    mods = {}
    for name in ("simple_tokenizer", "viclip_vision", "viclip_text"):
        spec = importlib.util.spec_from_file_location(f"vbench_viclip.{name}", pkg / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, f"vbench_viclip.{name}", mods[name])
        spec.loader.exec_module(mods[name])
    monkeypatch.setitem(sys.modules, "vbench_viclip", types.SimpleNamespace(__path__=[str(pkg)]))
    state = tiny_viclip_state(1)
    vis = mods["viclip_vision"].VisionTransformer(224, 14, W, 1, 1, output_dim=OUT, num_frames=FRAMES).eval()
    vis.load_state_dict({k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")})
    txt = mods["viclip_text"].CLIP_TEXT(OUT, CTX, 49408, TW, 1, 1, 0).eval()
    txt.load_state_dict({k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")})
    bb = load_backbone("viclip", LoadContext(_save(state, tmp_path), torch.device("cpu")))
    frames = torch.randint(0, 256, (FRAMES, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want_v = F.normalize(vis(clip_transform_uint8(frames)[None].permute(0, 2, 1, 3, 4)), dim=-1)[0]
        want_t = F.normalize(txt(txt.tokenize(["a dog running, in super slow motion"], context_length=CTX).long()), dim=-1)
    assert torch.allclose(bb.encode_video(frames), want_v, atol=1e-4)
    assert torch.allclose(bb.encode_text(["a dog running, in super slow motion"]), want_t, atol=1e-4)


def test_video_text_dimensions_on_viclip(tmp_path):
    state = tiny_viclip_state()
    root = _save(state, tmp_path / "w")
    entries = [Entry("a cat walking, slow motion", ("temporal_style",)), Entry("a red car on a road", ("overall_consistency",))]
    g = torch.Generator().manual_seed(0)
    for e in entries:
        save_media(VideoBatch(torch.rand(1, 12, 3, 48, 64, generator=g), fps=8.0), tmp_path / "v", [f"{e.prompt}-0"])
    suite = Suite(name="vt", modality="video", entries=entries, dimensions=["temporal_style", "overall_consistency"],
                  samples_per_prompt=1, backbones={"video_text": ["viclip", "clip-vitb32"]})
    run = run_benchmark(suite, tmp_path / "v", tmp_path / "out", weights_dir=root, progress=False)
    res = build_results(run)["dimensions"]
    bb = load_backbone("viclip", LoadContext(root, torch.device("cpu")))
    for d, e in zip(("temporal_style", "overall_consistency"), entries):
        assert res[d]["backbone"] == "vbench:viclip" and res[d]["comparable_with_vbench"]
        frames, _ = decode(str(tmp_path / "v" / f"{e.prompt}-0.mp4"))
        idx = [0, 1, 3, 4, 6, 7, 9, 10]  # get_frame_indices(8, 12, 'middle')
        want = float(bb.encode_video(frames[idx]) @ bb.encode_text([e.prompt])[0])
        assert res[d]["raw"] == pytest.approx(want, abs=1e-6)
