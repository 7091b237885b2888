"""Backbones the benchmark dimensions share: feature extractors, optical flow, interpolators, IQA.

A backbone is loaded once per run by the runner and its outputs are shared by every dimension that
declares it. Backbones are registered by name in :data:`BACKBONES` (``@register_backbone("name")``
on a factory ``ctx -> Backbone``); a suite lists, per role, the names it prefers. Each backbone
carries the preprocessing of Vchitect/VBench@45e79ec (``vbench/utils.py``: ``init_submodules``,
``dino_transform``, ``clip_transform``):

* ``dino-vitb16`` — DINO ViT-B/16 CLS token via timm; ``dino_transform(224)``: Resize(224, bilinear,
  antialias=False) on float 0–255, no crop, /255, ImageNet normalisation;
* ``clip-vitb32`` — OpenAI CLIP ViT-B/32 via open_clip; ``clip_transform(224)``: Resize(224, bicubic,
  antialias=False), CenterCrop(224), /255, CLIP normalisation (fp32 on CPU; VBench uses fp16 on CUDA);
* ``laion-aesthetic`` — CLIP ViT-L/14 + LAION linear head, score = Linear(normalize(emb))/10
  (``vbench/aesthetic_quality.py``);
* ``musiq-spaq`` — MUSIQ via pyiqa if installed, preprocessing mode ``longer`` (``vbench/imaging_quality.py``);
* ``raft-large`` / ``raft-small`` — torchvision RAFT, iters 20, sintel padding to ×8 (``vbench/dynamic_degree.py``);
* ``horn-schunck`` — a *classical fallback* flow (Horn & Schunck 1981), labelled as such in results;
* ``linear-interp`` — a *classical fallback* interpolator for motion_smoothness (the mean of the two
  neighbours, truncated like AMT's output), labelled as such; ``amt-s`` (AMT-S) is not bundled;
* ``pixels`` — an 8×8 pixel-space feature, the labelled stand-in when no learned model is shipped.

Weights are read from disk only, in VBench's cache layout under ``weights_dir`` (``$VBENCH_CACHE_DIR``
or ``~/.cache/vbench`` by default). A missing file or package raises :class:`BackboneMissing`, which
the runner turns into a "backbone missing" result for the dimensions that need it — never a number.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mmalign.errors import InputError
from mmalign.registry import Registry

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneMissing(InputError):
    """A backbone's weights or package are not available; the dimensions needing it report so."""


@dataclass
class LoadContext:
    weights_dir: Path
    device: torch.device
    batch_size: int = 32


def default_weights_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))


def _need_file(ctx: LoadContext, rel: str, what: str) -> Path:
    path = ctx.weights_dir / rel
    if not path.is_file():
        raise BackboneMissing(f"{what}: weights not found at {path}; put the file there or pass --weights DIR")
    return path


# ---------------------------------------------------------------------------------------------
# preprocessing (vbench/utils.py)


def dino_transform(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench ``dino_transform(224)`` on float frames ``[T,3,H,W]`` in 0–255: shorter side → 224, no crop."""
    x = TF.resize(frames.float(), size, interpolation=InterpolationMode.BILINEAR, antialias=False)
    return TF.normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_transform(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench ``clip_transform(224)`` on float frames ``[T,3,H,W]`` in 0–255 (bicubic overshoot not clamped)."""
    x = TF.resize(frames.float(), size, interpolation=InterpolationMode.BICUBIC, antialias=False)
    x = TF.center_crop(x, size)
    return TF.normalize(x / 255.0, CLIP_MEAN, CLIP_STD)


# ---------------------------------------------------------------------------------------------
# backbone kinds


@dataclass
class Backbone:
    """Base: ``name``, ``kind`` (what the runner asks of it) and a ``note`` that reports must show
    (e.g. "classical fallback")."""

    kind: ClassVar[str] = "image"
    name: str
    note: str = field(default="", kw_only=True)
    batch_size: int = field(default=32, kw_only=True)


@dataclass
class FeatureBackbone(Backbone):
    """Image features ``[T, D]`` from uint8 frames ``[T, 3, H, W]``, batched, under ``no_grad``."""

    model: Callable[[torch.Tensor], torch.Tensor] | None = None
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    text_model: Callable[[list[str]], torch.Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, frames.shape[0], self.batch_size):
                x = self.preprocess(frames[i : i + self.batch_size].float())  # [b, 3, h, w]
                out.append(self.model(x.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if self.text_model is None:
            raise BackboneMissing(f"backbone {self.name!r} has no text tower")
        with torch.no_grad():
            return self.text_model(texts).float().cpu()


@dataclass
class FlowBackbone(Backbone):
    """Flow magnitude maps ``[P, H', W']`` for frame pairs (a_i → b_i), uint8 frames ``[P, 3, H, W]``."""

    kind: ClassVar[str] = "flow"
    flow_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def magnitudes(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, a.shape[0], self.batch_size):
                flow = self.flow_fn(a[i : i + self.batch_size].float(), b[i : i + self.batch_size].float())
                out.append(flow.square().sum(1).sqrt().float().cpu())  # [b, H', W']
        return torch.cat(out)


@dataclass
class InterpBackbone(Backbone):
    """Midpoint frames (uint8 ``[P, 3, H, W]``) between pairs of uint8 frames."""

    kind: ClassVar[str] = "interp"
    interp_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def midpoints(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.interp_fn(a, b)


@dataclass
class ScoreBackbone(Backbone):
    """One score per frame ``[T]`` (aesthetic head, MUSIQ)."""

    kind: ClassVar[str] = "score"
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, frames.shape[0], self.batch_size):
            out.append(self.score_fn(frames[i : i + self.batch_size]).float().cpu().reshape(-1))
        return torch.cat(out)[:, None] if out else torch.zeros(0, 1)


# ---------------------------------------------------------------------------------------------
# registry

BackboneFactory = Callable[[LoadContext], Backbone]
#: backbone name -> factory ``ctx -> Backbone``
BACKBONES: Registry[BackboneFactory] = Registry("backbone")
#: ``@register_backbone("my-amt")`` registers a factory; list the name first for its role in a suite
register_backbone = BACKBONES.register


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching the wildcard ``pattern`` (suites' plugins add theirs when loaded)."""
    return BACKBONES.names(pattern)


def load_backbone(name: str, ctx: LoadContext) -> Backbone:
    """Build backbone ``name``; :class:`BackboneMissing` if its weights or package are absent, a
    ConfigError naming the nearest if no backbone has that name."""
    return BACKBONES.get(name)(ctx)


# ---------------------------------------------------------------------------------------------
# DINO / CLIP / aesthetic / MUSIQ


def dino_backbone_from_model(model: torch.nn.Module, name: str = "dino-vitb16", **kw) -> FeatureBackbone:
    """Wrap a timm ViT (``num_classes=0``, CLS pooling) with VBench's DINO preprocessing.

    DINO's hub ViT embeds patches with a stride-16 Conv2d, which ignores the last H mod 16 rows and
    W mod 16 columns of a non-square resize; timm asserts divisibility, so the same crop is made here.
    (Its positional-embedding interpolation for non-224 grids is timm's, not DINO's: a documented deviation.)
    """
    model.eval()
    pe = getattr(getattr(model, "patch_embed", None), "patch_size", (16, 16))
    ph, pw = (pe, pe) if isinstance(pe, int) else tuple(pe)

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        y = dino_transform(x)
        return y[..., : y.shape[-2] // ph * ph, : y.shape[-1] // pw * pw]

    return FeatureBackbone(name, model=model, preprocess=preprocess, **kw)


@register_backbone("dino-vitb16")
def _dino(ctx: LoadContext) -> Backbone:
    import timm

    path = _need_file(ctx, "dino_model/dino_vitbase16_pretrain.pth", "DINO ViT-B/16")
    model = timm.create_model(
        "vit_base_patch16_224.dino",
        pretrained=True,
        num_classes=0,
        dynamic_img_size=True,
        pretrained_cfg_overlay={"file": str(path)},
    )
    return dino_backbone_from_model(model.to(ctx.device), device=ctx.device, batch_size=ctx.batch_size)


def clip_backbone_from_model(model, tokenizer=None, name: str = "clip-vitb32", **kw) -> FeatureBackbone:
    """Wrap an open_clip CLIP with VBench's ``clip_transform(224)``; features are L2-normalised."""
    model.eval()
    device = kw.get("device", torch.device("cpu"))

    def image(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.encode_image(x), dim=-1)

    def text(texts: list[str]) -> torch.Tensor:
        return F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)

    return FeatureBackbone(name, model=image, preprocess=clip_transform, text_model=text if tokenizer else None, **kw)


def _open_clip(ctx: LoadContext, arch: str, rel: str, what: str):
    import open_clip

    path = _need_file(ctx, rel, what)
    model = open_clip.create_model(arch, pretrained=str(path), device=ctx.device)
    return model, open_clip.get_tokenizer(arch)


@register_backbone("clip-vitb32")
def _clip_b32(ctx: LoadContext) -> Backbone:
    model, tok = _open_clip(ctx, "ViT-B-32-quickgelu", "clip_model/ViT-B-32.pt", "CLIP ViT-B/32")
    return clip_backbone_from_model(model, tok, device=ctx.device, batch_size=ctx.batch_size)


def aesthetic_backbone_from_model(model, head: torch.nn.Linear, name: str = "laion-aesthetic", **kw) -> ScoreBackbone:
    """LAION aesthetic: score = Linear(768→1)(normalize(fp32(encode_image(x)))) / 10 (``vbench/aesthetic_quality.py``)."""
    model.eval()
    head.eval()
    device = kw.pop("device", torch.device("cpu"))

    def score(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            emb = model.encode_image(clip_transform(frames.float()).to(device)).float()
            return head(F.normalize(emb, dim=-1)).squeeze(-1) / 10.0

    return ScoreBackbone(name, score_fn=score, **kw)


@register_backbone("laion-aesthetic")
def _aesthetic(ctx: LoadContext) -> Backbone:
    # A thin wrapper of our own (the scorer package's aesthetic scorer, if any, uses its own card).
    model, _ = _open_clip(ctx, "ViT-L-14-quickgelu", "clip_model/ViT-L-14.pt", "CLIP ViT-L/14")
    head_path = _need_file(ctx, "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "LAION aesthetic head")
    head = torch.nn.Linear(768, 1)
    head.load_state_dict(torch.load(head_path, map_location="cpu", weights_only=True))
    return aesthetic_backbone_from_model(model, head.to(ctx.device), device=ctx.device, batch_size=ctx.batch_size)


def musiq_preprocess(frame: torch.Tensor, mode: str = "longer") -> torch.Tensor:
    """VBench imaging_quality preprocessing (default ``longer``): longer side ≤ 512, then /255 (``vbench/imaging_quality.py``)."""
    h, w = frame.shape[-2:]
    x = frame.float()
    if mode == "longer" and max(h, w) > 512:
        s = 512 / max(h, w)
        x = TF.resize(x, [int(s * h), int(s * w)], antialias=False)
    elif mode == "shorter" and min(h, w) > 512:
        s = 512 / min(h, w)
        x = TF.resize(x, [int(s * h), int(s * w)], antialias=False)
    return x / 255.0


@register_backbone("musiq-spaq")
def _musiq(ctx: LoadContext) -> Backbone:
    try:
        import pyiqa  # type: ignore[import-not-found]
    except ImportError as err:
        raise BackboneMissing("MUSIQ (imaging_quality) needs pyiqa: pip install pyiqa") from err
    path = _need_file(ctx, "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "MUSIQ-SPAQ")
    metric = pyiqa.create_metric("musiq-spaq", pretrained_model_path=str(path), device=ctx.device, as_loss=False)

    def score(frames: torch.Tensor) -> torch.Tensor:  # one frame per call, as VBench
        with torch.no_grad():
            return torch.stack([metric(musiq_preprocess(f)[None].to(ctx.device)).reshape(()) for f in frames])

    return ScoreBackbone("musiq-spaq", score_fn=score, batch_size=1)


# ---------------------------------------------------------------------------------------------
# optical flow


def sintel_pad(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """RAFT ``InputPadder`` sintel mode: replicate-pad H and W evenly to a multiple of 8."""
    h, w = x.shape[-2:]
    ph = (((h // multiple) + 1) * multiple - h) % multiple
    pw = (((w // multiple) + 1) * multiple - w) % multiple
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")


def raft_backbone_from_model(model: torch.nn.Module, name: str, iters: int = 20, **kw) -> FlowBackbone:
    """torchvision RAFT on float frames 0–255 → 2x/255−1, padded to ×8; magnitudes over the padded field."""
    model.eval()
    device = kw.pop("device", torch.device("cpu"))

    def flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = sintel_pad(2 * (a / 255.0) - 1).to(device)
        b = sintel_pad(2 * (b / 255.0) - 1).to(device)
        return model(a, b, num_flow_updates=iters)[-1]

    return FlowBackbone(name, flow_fn=flow, **kw)


def _raft(ctx: LoadContext, small: bool) -> Backbone:
    from torchvision.models.optical_flow import raft_large, raft_small

    rel = "raft_model/raft_small_C_T_V2-01064c6d.pth" if small else "raft_model/raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    path = _need_file(ctx, rel, "torchvision RAFT (VBench's raft-things.pth uses the Princeton layout, not loadable here)")
    model = (raft_small if small else raft_large)(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    note = "torchvision RAFT weights (VBench uses Princeton raft-things; numbers are close, not identical)"
    return raft_backbone_from_model(model.to(ctx.device), "raft-small" if small else "raft-large", note=note, device=ctx.device)


register_backbone("raft-large")(lambda ctx: _raft(ctx, small=False))
register_backbone("raft-small")(lambda ctx: _raft(ctx, small=True))


def horn_schunck(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.05, iters: int = 30, levels: int = 3) -> torch.Tensor:
    """Coarse-to-fine Horn–Schunck flow ``[P, 2, H, W]`` (pixels) between float frames 0–255.

    Classical fallback (Horn & Schunck, "Determining optical flow", 1981, eq. 12–13): grey-level
    images in [0, 1], smoothness weight ``alpha``², Jacobi iterations, warped image pyramid.
    """
    def grey(x: torch.Tensor) -> torch.Tensor:
        g = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None] / 255.0
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        return F.conv2d(F.pad(g, [1, 1, 1, 1], mode="replicate"), (k[:, None] * k[None, :])[None, None])

    ga, gb = grey(a), grey(b)  # [P, 1, H, W]
    pyr = [(ga, gb)]
    for _ in range(levels - 1):
        if min(pyr[-1][0].shape[-2:]) < 16:
            break
        pyr.append((F.avg_pool2d(pyr[-1][0], 2), F.avg_pool2d(pyr[-1][1], 2)))
    avg = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])[None, None]
    avg2 = avg.expand(2, 1, 3, 3)
    flow = torch.zeros(ga.shape[0], 2, *pyr[-1][0].shape[-2:])
    for la, lb in reversed(pyr):
        if flow.shape[-2:] != la.shape[-2:]:
            flow = 2 * F.interpolate(flow, size=la.shape[-2:], mode="bilinear", align_corners=False)
        h, w = la.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        grid = torch.stack([(xs + flow[:, 0]) / max(w - 1, 1) * 2 - 1, (ys + flow[:, 1]) / max(h - 1, 1) * 2 - 1], -1)
        wb = F.grid_sample(lb, grid, mode="bilinear", padding_mode="border", align_corners=True)
        ix = (F.pad(wb, [1, 1, 0, 0], mode="replicate")[..., 2:] - F.pad(wb, [1, 1, 0, 0], mode="replicate")[..., :-2]) / 2
        iy = (F.pad(wb, [0, 0, 1, 1], mode="replicate")[..., 2:, :] - F.pad(wb, [0, 0, 1, 1], mode="replicate")[..., :-2, :]) / 2
        it = wb - la
        d = torch.zeros(la.shape[0], 2, h, w)  # (du, dv) increment at this level
        grad = torch.cat([ix, iy], 1)  # [P, 2, H, W]
        den = alpha**2 + ix**2 + iy**2
        for _ in range(iters):
            db = F.conv2d(F.pad(d, [1, 1, 1, 1], mode="replicate"), avg2, groups=2)  # local means
            t = ((grad * db).sum(1, keepdim=True) + it) / den
            d = db - grad * t
        du, dv = d[:, :1], d[:, 1:]
        flow = flow + torch.cat([du, dv], 1)
    return flow


@register_backbone("horn-schunck")
def _hs(ctx: LoadContext) -> Backbone:
    note = "classical fallback (Horn-Schunck), not RAFT: thresholds were calibrated on RAFT"
    return FlowBackbone("horn-schunck", flow_fn=horn_schunck, note=note, batch_size=64)


# ---------------------------------------------------------------------------------------------
# interpolation and stand-ins


def linear_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of the neighbours, converted like AMT's output (x/255 → clip(x·255) → uint8, truncating)."""
    mid = (a.float() / 255.0 + b.float() / 255.0) / 2
    return (mid * 255.0).clamp(0, 255).to(torch.uint8)


@register_backbone("linear-interp")
def _linear(ctx: LoadContext) -> Backbone:
    note = "classical fallback (linear interpolation), not AMT-S"
    return InterpBackbone("linear-interp", interp_fn=linear_midpoint, note=note)


@register_backbone("amt-s")
def _amt(ctx: LoadContext) -> Backbone:
    raise BackboneMissing(
        "AMT-S (motion_smoothness) is not bundled; register yours under another name with "
        "mmalign.bench.backbones.register_backbone('my-amt') and put it first for the 'interp' role "
        "(run_benchmark(..., backbones={'interp': ['my-amt']})), or use the labelled 'linear-interp' fallback"
    )


def pixel_features(x: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Area-downsampled pixels ``[T, 3·size²]`` (0–1), a model-free stand-in for a feature backbone."""
    return F.adaptive_avg_pool2d(x / 255.0, size).flatten(1)


@register_backbone("pixels")
def _pixels(ctx: LoadContext) -> Backbone:
    note = "stand-in: 8x8 pixel features (no learned image model available)"
    return FeatureBackbone("pixels", model=pixel_features, preprocess=lambda x: x, note=note, batch_size=256)
