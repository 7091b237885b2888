"""ViCLIP (Wang et al., "InternVid", ICLR 2024) for ``temporal_style`` and ``overall_consistency``.

VBench (Vchitect/VBench@45e79ec ``vbench/third_party/ViCLIP``) loads ``ViCLIP/ViClip-InternVid-10M-FLT.pth``
(``torch.load(...)["model"]``: ``vision_encoder.*``, ``text_encoder.*``, ``temp``) into

* a video ViT-L/14 (``viclip_vision.py::VisionTransformer``): per-frame 14×14 patches (a Conv3d of
  kernel 1×14×14), class token and spatial positions as in CLIP, plus a learned temporal position per
  frame; the patch tokens of all frames (patch-major, frame-minor) and one class token go through one
  transformer (joint space–time attention, QuickGELU); the class token, ``ln_post`` and ``proj`` give
  the video embedding — written here as :class:`ViCLIPVision` on open_clip's ``Transformer``;
* OpenAI's CLIP text transformer with a context of 32 tokens (``viclip_text.py::CLIP_TEXT``), which is
  open_clip's ``TextTransformer`` (argmax/EOT pooling) under the same parameter names.

Frames: 8 'middle' frames as uint8 (``read_frames_decord_by_fps``), ``clip_transform(224)`` on uint8
(the bicubic resize rounds and clamps to uint8), /255, CLIP normalisation. Score: cos(video, prompt).
VBench never calls ``.eval()`` on ViCLIP, so its drop-path (up to 0.1) is active and its scores vary from
run to run; here the model is in eval mode (deterministic), a documented deviation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mmalign.bench.backbones import CLIP_MEAN, CLIP_STD, Backbone, LoadContext, _need_file, register_backbone

VICLIP_FILE = "ViCLIP/ViClip-InternVid-10M-FLT.pth"


def clip_transform_uint8(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench ``clip_transform(224)`` applied to uint8 frames ``[T, 3, H, W]`` (resize output rounded to uint8)."""
    x = TF.resize(frames, size, interpolation=InterpolationMode.BICUBIC, antialias=False)  # uint8 in, uint8 out
    x = TF.center_crop(x, size)
    return TF.normalize(x.float() / 255.0, CLIP_MEAN, CLIP_STD)


class ViCLIPVision(nn.Module):
    """ViCLIP's video encoder: frames ``[B, T, 3, H, W]`` (normalised) → embeddings ``[B, output_dim]``."""

    def __init__(self, width: int = 1024, layers: int = 24, heads: int = 16, patch: int = 14, image_size: int = 224,
                 frames: int = 8, output_dim: int = 768):
        from open_clip.model import QuickGELU
        from open_clip.transformer import Transformer

        super().__init__()
        grid = image_size // patch
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act_layer=QuickGELU)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.permute(0, 2, 1, 3, 4))  # [B, C, T, h, w]
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c)  # [B, T, N, C]
        x = x + self.positional_embedding[1:].to(x.dtype)  # spatial positions of the patches
        temporal = self.temporal_positional_embedding
        x = x + (temporal.mean(1) if t == 1 else temporal[0, :t, None, :]).to(x.dtype)  # one per frame
        x = x.transpose(1, 2).reshape(b, h * w * t, c)  # patch-major, frame-minor ('(b n) t m -> b (n t) m')
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, c)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.ln_post(self.transformer(x))  # batch-first
        return x[:, 0] @ self.proj


def build_viclip(state: dict[str, torch.Tensor]) -> tuple[ViCLIPVision, nn.Module]:
    """Video and text towers holding a ViCLIP checkpoint's ``model`` dict (sizes read from its tensors)."""
    from open_clip.model import QuickGELU
    from open_clip.transformer import TextTransformer

    vis = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    txt = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    if not vis or not txt:
        raise ValueError("not a ViCLIP checkpoint: no vision_encoder.* / text_encoder.* weights")

    def n_layers(sd: dict[str, torch.Tensor]) -> int:
        return 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))

    width, patch = vis["conv1.weight"].shape[0], vis["conv1.weight"].shape[-1]
    grid = round((vis["positional_embedding"].shape[0] - 1) ** 0.5)
    vision = ViCLIPVision(width, n_layers(vis), width // 64, patch, grid * patch,
                          vis["temporal_positional_embedding"].shape[1], vis["proj"].shape[1])
    vision.load_state_dict(vis, strict=True)
    twidth = txt["ln_final.weight"].shape[0]
    text = TextTransformer(context_length=txt["positional_embedding"].shape[0], vocab_size=txt["token_embedding.weight"].shape[0],
                           width=twidth, heads=twidth // 64, layers=n_layers(txt), output_dim=txt["text_projection"].shape[1],
                           act_layer=QuickGELU)
    text.load_state_dict(txt, strict=True)
    return vision.eval(), text.eval()


@dataclass
class VideoTextBackbone(Backbone):
    """One embedding per video ``[D]`` for uint8 frames ``[T, 3, H, W]``, and a text tower (L2-normalised)."""

    kind: ClassVar[str] = "video_text"
    video_model: nn.Module | None = None
    text_model: nn.Module | None = None
    tokenizer: object = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        x = clip_transform_uint8(frames)[None]  # [1, T, 3, 224, 224]
        with torch.no_grad():
            return F.normalize(self.video_model(x.to(self.device, self.dtype)).float(), dim=-1)[0].cpu()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.text_model(self.tokenizer(texts).to(self.device)).float(), dim=-1).cpu()


@register_backbone("viclip")
def _viclip(ctx: LoadContext) -> Backbone:
    from open_clip.tokenizer import SimpleTokenizer

    path = _need_file(ctx, VICLIP_FILE, "ViCLIP ViT-L/14 (InternVid-10M-FLT)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path}: expected a ViCLIP checkpoint (a dict with a 'model' entry)")
    vision, text = build_viclip(ckpt["model"])
    tok = SimpleTokenizer(context_length=text.context_length)  # OpenAI's BPE (bpe_simple_vocab_16e6), truncating
    return VideoTextBackbone("viclip", video_model=vision.to(ctx.device, ctx.dtype), text_model=text.to(ctx.device, ctx.dtype),
                             tokenizer=tok, device=ctx.device, dtype=ctx.dtype, origin="vbench")
