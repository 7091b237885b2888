"""Video action classifiers for ``human_action``: VBench's UMT ViT-L/16 in transformers' VideoMAE classes.

VBench (Vchitect/VBench@45e79ec ``vbench/human_action.py``) classifies 16 'middle' frames with UMT
(Li et al., "Unmasked Teacher", ICCV 2023), built by ``third_party/umt/models/modeling_finetune.py``
as ``vit_large_patch16_224(num_classes=400, all_frames=16, tubelet_size=1, use_mean_pooling=True)``:
a VideoMAE-style video ViT (Conv3d patches of 1×16×16, fixed sinusoidal positions, pre-norm blocks
with q/v biases, mean pooling, LayerNorm, linear head). That is the architecture of transformers'
``VideoMAEForVideoClassification`` with ``tubelet_size=1``; :func:`umt_to_videomae` maps VBench's
checkpoint ``umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth`` onto it. Two UMT details are kept:
LayerNorm eps 1e-6 everywhere (also in ``fc_norm``), and its positions — the 8-frame 14×14
sinusoid table linearly interpolated to 16 frames (``get_sinusoid_encoding_table``), unless the
checkpoint carries its own ``pos_embed``.

Preprocessing (``human_action.py`` data_transform): shorter side → 256 (bilinear; VBench's
``cv2.resize`` INTER_LINEAR on uint8, here torch bilinear rounded to uint8, ±1 level), centre crop
224 (offset ``round((s − 224)/2)``), /255, ImageNet normalisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from mmalign.bench.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, LoadContext, _need_file, register_backbone
from mmalign.bench.kinetics400 import KINETICS400_VBENCH

UMT_FILE = "umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth"


def umt_transform(frames: torch.Tensor, size: int = 224, short: int = 256) -> torch.Tensor:
    """uint8 frames ``[T, 3, H, W]`` → normalised float ``[T, 3, 224, 224]`` as VBench's UMT data_transform."""
    h, w = frames.shape[-2:]
    x = frames.float()
    if min(h, w) != short:  # umt/functional.py::get_resize_sizes: the other side int(short·long/short_side)
        oh, ow = (int(short * h / w), short) if w < h else (short, int(short * w / h))
        x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False).round().clamp(0, 255)
    h, w = x.shape[-2:]
    y0, x0 = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    x = x[..., y0 : y0 + size, x0 : x0 + size] / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def umt_position_table(num_frames: int, dim: int, grid: int = 14, pre_frames: int = 8) -> torch.Tensor:
    """UMT's positions ``[1, num_frames·grid², dim]``: the sinusoid table of ``pre_frames·grid²``
    positions (Vaswani et al. 2017, eq. 5: sin on even, cos on odd channels), reshaped to
    ``(pre_frames, grid, grid)`` and linearly interpolated over time to ``num_frames``
    (``modeling_finetune.py::get_sinusoid_encoding_table``)."""
    n = pre_frames * grid * grid
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    expo = torch.tensor([2 * (j // 2) / dim for j in range(dim)], dtype=torch.float64)
    table = pos / torch.pow(10000.0, expo)[None]  # [n, dim]
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    table = table.float()[None]
    if num_frames == pre_frames:
        return table
    t = table.reshape(1, pre_frames, grid, grid, dim).permute(0, 2, 3, 4, 1).reshape(-1, dim, pre_frames)
    t = F.interpolate(t, size=num_frames, mode="linear")  # [grid², dim, num_frames]
    return t.reshape(1, grid, grid, dim, num_frames).permute(0, 4, 1, 2, 3).flatten(1, 3)


#: UMT (``modeling_finetune.py``) module names -> transformers VideoMAE names
_UMT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.proj\.", "videomae.embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"videomae.encoder.layer.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.norm2\.", r"videomae.encoder.layer.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"videomae.encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.attn\.q_bias$", r"videomae.encoder.layer.\1.attention.attention.query.bias"),
    (r"^blocks\.(\d+)\.attn\.v_bias$", r"videomae.encoder.layer.\1.attention.attention.value.bias"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"videomae.encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"videomae.encoder.layer.\1.output.dense."),
    (r"^fc_norm\.", "fc_norm."),
    (r"^head\.", "classifier."),
)


def umt_to_videomae(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """VideoMAE state dict from a UMT fine-tuned checkpoint, and the checkpoint's ``pos_embed`` (or None).

    ``blocks.i.attn.qkv.weight`` ``[3C, C]`` is split into query/key/value (UMT has no key bias)."""
    out: dict[str, torch.Tensor] = {}
    pos = state.get("pos_embed")
    for key, value in state.items():
        if key == "pos_embed":
            continue
        m = re.match(r"^blocks\.(\d+)\.attn\.qkv\.weight$", key)
        if m:
            prefix = f"videomae.encoder.layer.{m.group(1)}.attention.attention"
            for part, w in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}.{part}.weight"] = w
            continue
        k = key
        for pattern, repl in _UMT_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = value
    return out, pos


def build_umt(state: dict[str, torch.Tensor], num_frames: int = 16, image_size: int = 224):
    """``VideoMAEForVideoClassification`` holding a UMT checkpoint (sizes read from its tensors)."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    sd, pos = umt_to_videomae(state)
    dim = sd["videomae.embeddings.patch_embeddings.projection.weight"].shape[0]
    patch = sd["videomae.embeddings.patch_embeddings.projection.weight"].shape[-1]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("videomae.encoder.layer."))
    cfg = VideoMAEConfig(
        image_size=image_size, patch_size=patch, num_frames=num_frames, tubelet_size=1, hidden_size=dim,
        num_hidden_layers=layers, num_attention_heads=max(1, dim // 64),
        intermediate_size=sd["videomae.encoder.layer.0.intermediate.dense.weight"].shape[0],
        qkv_bias=True, use_mean_pooling=True, num_labels=sd["classifier.weight"].shape[0], layer_norm_eps=1e-6,
    )
    model = VideoMAEForVideoClassification(cfg)
    model.fc_norm.eps = 1e-6  # UMT's norm_layer is LayerNorm(eps=1e-6) for fc_norm too
    model.load_state_dict(sd, strict=True)
    grid = image_size // patch
    model.videomae.embeddings.position_embeddings = (
        pos.float() if pos is not None else umt_position_table(num_frames, dim, grid=grid))
    return model.eval()


@dataclass
class ActionBackbone(Backbone):
    """A video classifier: logits ``[C]`` for uint8 frames ``[T, 3, H, W]`` and the class names."""

    kind: ClassVar[str] = "action"
    model: torch.nn.Module | None = None
    labels: tuple[str, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        x = umt_transform(frames)[None]  # [1, T, 3, 224, 224]
        with torch.no_grad():
            return self.model(pixel_values=x.to(self.device, self.dtype)).logits[0].float().cpu()


def action_correct(logits: torch.Tensor, labels: tuple[str, ...], label: str, k: int = 5, p_min: float = 0.85) -> bool:
    """VBench ``human_action.py``: p = sigmoid(logits); of the top-``k``, keep the classes with
    round(p, 4) ≥ 0.85; correct iff ``label`` is among them."""
    probs, idx = torch.topk(torch.sigmoid(logits.float()), k)
    return any(round(float(p), 4) >= p_min and labels[int(i)] == label for p, i in zip(probs, idx))


@register_backbone("umt")
def _umt(ctx: LoadContext) -> Backbone:
    path = _need_file(ctx, UMT_FILE, "UMT ViT-L/16 (Kinetics-400)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_umt(state).to(ctx.device, ctx.dtype)
    if model.config.num_labels != len(KINETICS400_VBENCH):
        raise ValueError(f"{path}: {model.config.num_labels} classes, expected Kinetics-400")
    return ActionBackbone("umt", model=model, labels=KINETICS400_VBENCH, device=ctx.device, dtype=ctx.dtype,
                          origin="vbench")

