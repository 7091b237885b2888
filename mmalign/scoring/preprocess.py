"""Tensor preprocessing of images for CLIP-family scorers (differentiable end to end).

* :func:`letterbox` — HPS v2/v2.1's val transform (tgxs002/HPSv2@866735e
  ``hpsv2/src/open_clip/transform.py``: ``ResizeMaxSize`` then ``Normalize``): bicubic resize of
  the long side to ``size`` on the tensor, zero padding to ``size``×``size`` *before* Normalize, so
  padded pixels become −mean/std. One deliberate difference: when the long side already equals
  ``size`` upstream does nothing at all (a non-square image then crashes the ViT); we still pad.
* :func:`center_crop` — OpenAI ``clip.load`` / HF CLIPImageProcessor style: resize the short side
  to ``size`` (bicubic), centre crop. Upstream runs this on PIL images; on tensors the values
  differ slightly (tensor ports such as imscore report 0.2–0.4% mean relative error), so images
  decoded from files take the reference's own PIL path instead (``ClipScorer.reference_preprocess``).

Inputs are ``[B, 3, H, W]`` floats in [0, 1] (ToTensor already applied). Torchvision ≥ 0.17
semantics: the tensor resize uses ``antialias=True`` unless the card says otherwise (on ≤ 0.16 the
tensor default was False); this uses torch's ``interpolate``, which torchvision's tensor
``resize`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmalign.scoring.card import PreprocessSpec


def letterbox_geometry(h: int, w: int, size: int = 224) -> tuple[int, int, tuple[int, int, int, int]]:
    """(h′, w′, (left, top, right, bottom)) of HPS's ``ResizeMaxSize``.

    scale = size / max(h, w); h′, w′ use Python ``round``; left = ⌊pad_w/2⌋, top = ⌊pad_h/2⌋.
    """
    scale = size / max(h, w)
    if scale != 1.0:
        h, w = round(h * scale), round(w * scale)
    pad_h, pad_w = size - h, size - w
    return h, w, (pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - m) / s


def _resize(pixels: torch.Tensor, h: int, w: int, mode: str, antialias: bool) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == (h, w):
        return pixels
    return F.interpolate(pixels, size=(h, w), mode=mode, align_corners=False, antialias=antialias)


def letterbox(pixels: torch.Tensor, size: int = 224, mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """Resize the long side to ``size`` and zero-pad to a square (not normalised)."""
    h, w = pixels.shape[-2:]
    nh, nw, (left, top, right, bottom) = letterbox_geometry(int(h), int(w), size)
    out = _resize(pixels, nh, nw, mode, antialias)
    return F.pad(out, (left, right, top, bottom), value=0.0)


def center_crop(pixels: torch.Tensor, size: int = 224, mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """Resize the short side to ``size`` (long side int-truncated, as torchvision) and centre crop."""
    h, w = (int(v) for v in pixels.shape[-2:])
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    out = _resize(pixels, nh, nw, mode, antialias)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return out[..., top : top + size, left : left + size]


@dataclass(frozen=True)
class ImagePreprocess:
    """The image transform of one scorer: geometry (letterbox / centre crop) then Normalize."""

    kind: str = "letterbox"
    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    mode: str = "bicubic"
    antialias: bool = True

    @classmethod
    def from_spec(cls, spec: PreprocessSpec) -> "ImagePreprocess":
        return cls(spec.kind, spec.size, tuple(spec.mean), tuple(spec.std), spec.interpolation, spec.antialias)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        geometry = {"letterbox": letterbox, "center_crop": center_crop}[self.kind]
        return normalize(geometry(pixels, self.size, self.mode, self.antialias), self.mean, self.std)
