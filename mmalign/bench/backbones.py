"""Backbones the benchmark dimensions share: feature extractors, optical flow, interpolators, IQA.

A backbone is loaded once per run by the runner and its outputs are shared by every dimension that
declares it. Backbones are registered by name in :data:`BACKBONES` (``@register_backbone("name")``
on a factory ``ctx -> Backbone``); a suite lists, per role, the names it prefers. Each backbone
carries the preprocessing of Vchitect/VBench@45e79ec (``vbench/utils.py``: ``init_submodules``,
``dino_transform``, ``clip_transform``):

* ``dino-vitb16`` — DINO ViT-B/16 CLS token via timm; ``dino_transform(224)``: Resize(224, bilinear,
  antialias=False) on float 0–255, no crop, /255, ImageNet normalisation;
* ``clip-vitb32`` — OpenAI CLIP ViT-B/32 from VBench's TorchScript archive ``clip_model/ViT-B-32.pt``
  through open_clip's OpenAI loader; ``clip_transform(224)``: Resize(224, bicubic, antialias=False),
  CenterCrop(224), /255, CLIP normalisation (``dtype`` fp32 by default; VBench uses fp16 on CUDA);
* ``laion-aesthetic`` — CLIP ViT-L/14 (``clip_model/ViT-L-14.pt``) + LAION linear head,
  score = Linear(normalize(emb))/10 (``vbench/aesthetic_quality.py``);
* ``musiq-spaq`` — MUSIQ (:mod:`mmalign.bench.musiq`, pyiqa's architecture without pyiqa), preprocessing
  mode ``longer`` (``vbench/imaging_quality.py``);
* ``raft-things`` — VBench's ``raft_model/models/raft-things.pth`` (princeton-vl/RAFT layout) mapped
  onto torchvision's RAFT-large (:func:`raft_things_to_torchvision`), iters 20, sintel padding to ×8
  (``vbench/dynamic_degree.py``, ``vbench/cli/static_filter.py``);
* ``raft-large`` / ``raft-small`` — torchvision's own RAFT weights, labelled substitutes;
* ``horn-schunck`` — a *classical fallback* flow (Horn & Schunck 1981), labelled as such in results;
* ``linear-interp`` — a *classical fallback* interpolator for motion_smoothness (the mean of the two
  neighbours, truncated like AMT's output), labelled as such; VBench's AMT-S is ``amt-s``
  (:mod:`mmalign.bench.amt`), its UMT ``umt`` (:mod:`mmalign.bench.action`), its ViCLIP ``viclip``
  (:mod:`mmalign.bench.viclip`); ``owlv2`` (:mod:`mmalign.bench.detectors`) substitutes for GRiT;
* ``pixels`` — an 8×8 pixel-space feature, the labelled stand-in when no learned model is shipped.

Weights are read from disk only, in VBench's cache layout under ``weights_dir`` (``$VBENCH_CACHE_DIR``
or ``~/.cache/vbench`` by default). A missing file or package raises :class:`BackboneMissing`; the
runner turns it, and any other load failure (a corrupt file, a wrong format), into an "unavailable"
result with the reason for the dimensions that need it — never a number, never an aborted run.

Every backbone says where its numbers come from: ``origin`` is ``"vbench"`` for VBench's own model
with VBench's weights, ``"substitute"`` for anything else (another model for the same role, a
classical fallback, a stand-in); :attr:`Backbone.label` (``"vbench:clip-vitb32"``) is what results,
reports and leaderboards print, and a substitute's number is not comparable with VBench's leaderboard.
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
    # compute dtype of the transformer backbones (CLIP, DINO, ViCLIP, UMT, OWLv2, BLIP); outputs are fp32,
    # and the flow (RAFT), interpolation (AMT-S) and IQA (MUSIQ) networks stay fp32, as in VBench
    dtype: torch.dtype = torch.float32


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
    """Base: ``name``, ``kind`` (what the runner asks of it), a ``note`` that reports must show
    (e.g. "classical fallback") and its ``origin`` (``"vbench"`` or ``"substitute"``)."""

    kind: ClassVar[str] = "image"
    name: str
    note: str = field(default="", kw_only=True)
    batch_size: int = field(default=32, kw_only=True)
    origin: str = field(default="substitute", kw_only=True)

    @property
    def label(self) -> str:
        """``"vbench:<name>"`` or ``"substitute:<name>"``: printed next to every number this backbone makes."""
        return f"{self.origin}:{self.name}"


@dataclass
class FeatureBackbone(Backbone):
    """Image features ``[T, D]`` from uint8 frames ``[T, 3, H, W]``, batched, under ``no_grad``."""

    model: Callable[[torch.Tensor], torch.Tensor] | None = None
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    text_model: Callable[[list[str]], torch.Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, frames.shape[0], self.batch_size):
                x = self.preprocess(frames[i : i + self.batch_size].float())  # [b, 3, h, w] fp32
                out.append(self.model(x.to(self.device, self.dtype)).float().cpu())
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


def load_dino(path: Path) -> torch.nn.Module:
    """A DINO ViT (facebookresearch/dino ``vision_transformer.py``: CLS token, learned positions, pre-norm
    blocks with qkv bias, LayerNorm eps 1e-6) as a timm ``VisionTransformer`` — the same parameter names —
    sized from the checkpoint (ViT-B/16 for VBench's ``dino_vitbase16_pretrain.pth``), CLS features."""
    from timm.models.vision_transformer import VisionTransformer

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.get("teacher", state).items()}
    dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    model = VisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth, num_heads=dim // 64,
                              mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, num_classes=0,
                              dynamic_img_size=True)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=True)
    return model.eval()


@register_backbone("dino-vitb16")
def _dino(ctx: LoadContext) -> Backbone:
    model = load_dino(_need_file(ctx, "dino_model/dino_vitbase16_pretrain.pth", "DINO ViT-B/16"))
    return dino_backbone_from_model(model.to(ctx.device, ctx.dtype), device=ctx.device, dtype=ctx.dtype,
                                    batch_size=ctx.batch_size, origin="vbench")


def clip_backbone_from_model(model, tokenizer=None, name: str = "clip-vitb32", **kw) -> FeatureBackbone:
    """Wrap an open_clip CLIP with VBench's ``clip_transform(224)``; features are L2-normalised."""
    model.eval()
    device = kw.get("device", torch.device("cpu"))

    def image(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.encode_image(x).float(), dim=-1)

    def text(texts: list[str]) -> torch.Tensor:
        return F.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)

    return FeatureBackbone(name, model=image, preprocess=clip_transform, text_model=text if tokenizer else None, **kw)


_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def load_openai_clip(path: Path, device: torch.device, dtype: torch.dtype = torch.float32):
    """An OpenAI CLIP from ``path`` as VBench has it: OpenAI's TorchScript archive (``clip.load``'s
    ``ViT-B-32.pt``) or a plain OpenAI-layout state dict, through open_clip's OpenAI loader
    (``open_clip.load_openai_model``, which rebuilds a non-JIT model from the archive's state dict)."""
    from open_clip import load_openai_model

    return load_openai_model(str(path), precision=_PRECISION[dtype], device=device)


def _openai_clip(ctx: LoadContext, rel: str, what: str):
    return load_openai_clip(_need_file(ctx, rel, what), ctx.device, ctx.dtype)


@register_backbone("clip-vitb32")
def _clip_b32(ctx: LoadContext) -> Backbone:
    import open_clip

    model = _openai_clip(ctx, "clip_model/ViT-B-32.pt", "CLIP ViT-B/32")
    tok = open_clip.get_tokenizer("ViT-B-32-quickgelu")  # OpenAI's BPE, context 77
    return clip_backbone_from_model(model, tok, device=ctx.device, dtype=ctx.dtype, batch_size=ctx.batch_size,
                                    origin="vbench")


def aesthetic_backbone_from_model(model, head: torch.nn.Linear, name: str = "laion-aesthetic", **kw) -> ScoreBackbone:
    """LAION aesthetic: score = Linear(768→1)(normalize(fp32(encode_image(x)))) / 10 (``vbench/aesthetic_quality.py``)."""
    model.eval()
    head.eval()
    device = kw.pop("device", torch.device("cpu"))
    dtype = kw.pop("dtype", torch.float32)

    def score(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            emb = model.encode_image(clip_transform(frames.float()).to(device, dtype)).float()
            return head(F.normalize(emb, dim=-1)).squeeze(-1) / 10.0

    return ScoreBackbone(name, score_fn=score, **kw)


@register_backbone("laion-aesthetic")
def _aesthetic(ctx: LoadContext) -> Backbone:
    # A thin wrapper of our own (the scorer package's aesthetic scorer, if any, uses its own card).
    head_path = _need_file(ctx, "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "LAION aesthetic head")
    model = _openai_clip(ctx, "clip_model/ViT-L-14.pt", "CLIP ViT-L/14")
    state = torch.load(head_path, map_location="cpu", weights_only=True)
    head = torch.nn.Linear(state["weight"].shape[1], 1)  # 768 for ViT-L/14
    head.load_state_dict(state)
    return aesthetic_backbone_from_model(model, head.to(ctx.device), device=ctx.device, dtype=ctx.dtype,
                                         batch_size=ctx.batch_size, origin="vbench")


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
        if min(a.shape[-2:]) < 128:  # torchvision's correlation pyramid needs 16 feature rows at 1/8 scale
            raise InputError(f"{name}: torchvision's RAFT needs frames of at least 128x128 px (padded: "
                             f"{a.shape[-2]}x{a.shape[-1]}); this video is too small for dynamic_degree")
        return model(a, b, num_flow_updates=iters)[-1]

    return FlowBackbone(name, flow_fn=flow, **kw)


#: princeton-vl/RAFT (``core/extractor.py``, ``core/update.py``; VBench ``third_party/RAFT``) module name
#: -> torchvision ``models/optical_flow/raft.py`` module name, matched on whole dotted components
_RAFT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^fnet\.", "feature_encoder."),
    (r"^cnet\.", "context_encoder."),
    (r"_encoder\.conv1\.", "_encoder.convnormrelu.0."),
    (r"_encoder\.norm1\.", "_encoder.convnormrelu.1."),
    (r"_encoder\.conv2\.", "_encoder.conv."),
    (r"(layer\d\.\d)\.conv([12])\.", r"\1.convnormrelu\2.0."),
    (r"(layer\d\.\d)\.norm([12])\.", r"\1.convnormrelu\2.1."),
    (r"^update_block\.encoder\.convc([12])\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"^update_block\.encoder\.convf([12])\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])([12])\.", r"update_block.recurrent_block.convgru\2.conv\1."),
    (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
    (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
)


def raft_things_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a princeton-vl/RAFT (full model) state dict, e.g. VBench's ``raft-things.pth``, onto
    torchvision's ``raft_large`` keys.

    The checkpoint was saved from ``nn.DataParallel`` (``module.`` prefix, stripped here). The
    architectures are the same network: encoders' ``conv1/norm1/conv2`` are torchvision's
    ``convnormrelu.{0,1}`` and ``conv``; residual blocks' ``conv{k}/norm{k}`` are ``convnormrelu{k}.{0,1}``
    and their ``norm3`` is the module also registered as ``downsample.1`` (a duplicate, dropped);
    the motion encoder's ``convc/convf/conv`` are ``convcorr/convflow/conv``; the separable GRU's
    ``conv{z,r,q}{1,2}`` are ``convgru{1,2}.conv{z,r,q}``; the mask head ``mask.{0,2}`` is
    ``mask_predictor.{convrelu.0,conv}`` (both scale it by 0.25).
    """
    import re

    out = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if re.search(r"layer\d\.\d\.norm3\.", k):
            continue
        for pattern, repl in _RAFT_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = value
    return out


def load_raft_things(path: Path) -> torch.nn.Module:
    """torchvision RAFT-large with the weights of a princeton-vl/RAFT checkpoint (``raft-things.pth``)."""
    from torchvision.models.optical_flow import raft_large

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = raft_large(weights=None)
    model.load_state_dict(raft_things_to_torchvision(state), strict=True)
    return model


@register_backbone("raft-things")
def _raft_things(ctx: LoadContext) -> Backbone:
    path = _need_file(ctx, "raft_model/models/raft-things.pth", "RAFT (raft-things)")
    return raft_backbone_from_model(load_raft_things(path).to(ctx.device), "raft-things", device=ctx.device,
                                    batch_size=ctx.batch_size, origin="vbench")


def _raft(ctx: LoadContext, small: bool) -> Backbone:
    from torchvision.models.optical_flow import raft_large, raft_small

    rel = "raft_model/raft_small_C_T_V2-01064c6d.pth" if small else "raft_model/raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    path = _need_file(ctx, rel, "torchvision RAFT")
    model = (raft_small if small else raft_large)(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    note = "torchvision RAFT weights (VBench uses raft-things; numbers are close, not identical)"
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


def pixel_features(x: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Area-downsampled pixels ``[T, 3·size²]`` (0–1), a model-free stand-in for a feature backbone."""
    return F.adaptive_avg_pool2d(x / 255.0, size).flatten(1)


@register_backbone("pixels")
def _pixels(ctx: LoadContext) -> Backbone:
    note = "stand-in: 8x8 pixel features (no learned image model available)"
    return FeatureBackbone("pixels", model=pixel_features, preprocess=lambda x: x, note=note, batch_size=256)
