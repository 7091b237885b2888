"""Media batches: images, videos and audio as float tensors, with validation.

Layouts (ARCHITECTURE.md, "Media"):

* :class:`ImageBatch` — ``pixels`` ``[B, 3, H, W]`` in [0, 1];
* :class:`VideoBatch` — ``pixels`` ``[B, T, 3, H, W]`` in [0, 1], plus ``fps``;
* :class:`AudioBatch` — ``samples`` ``[B, C, N]`` in [-1, 1], plus ``sample_rate``.

Each batch may carry per-item ``prompts`` and ``metadata``. Construction validates shape, dtype and
finiteness, so every consumer can trust a batch it receives.

Conversions: ``from_numpy`` / ``to_numpy`` (channel-last for images and videos, as PIL and most image
code use them) and ``from_pil`` / ``to_pil``. Files: :func:`load_media` (PNG/JPEG/WebP with Pillow,
MP4/WebM/GIF with PyAV, WAV/FLAC with soundfile, ``.npy`` in the item layout), :func:`load_folder`,
:func:`save_media` (atomic), and previews: :func:`image_grid`, :func:`video_contact_sheet`. Loading
checks that a file is decodable, non-empty, finite and of the right shape; an :class:`InputError`
names the file and the problem. Nothing is resized, padded or resampled unless asked.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from mmalign.errors import InputError

Modality = str  # "image" | "video" | "audio"
MODALITIES: tuple[str, ...] = ("image", "video", "audio")


def _check_tensor(t: torch.Tensor, ndim: int, layout: str, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if t.ndim != ndim:
        raise InputError(f"{where}: expected a tensor of layout {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if t.numel() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise InputError(f"{where}: non-finite values (NaN/inf) in item(s) {bad}")
    return t


# numpy arrays use the channel-last layout of PIL: images [B, H, W, 3], videos [B, T, H, W, 3]; audio
# keeps [B, C, N]. uint8 arrays are scaled by 1/255; float arrays must already be in range. ``where``
# names the source (a file, an argument) in error messages.

_RANGE_TOL = 1e-3  # values at most this far outside the range are rounding noise and are clamped


def _check_range(t: torch.Tensor, where: str, lo: float, hi: float) -> torch.Tensor:
    """``t`` clamped to [lo, hi]; an InputError if it is non-finite or clearly outside the range."""
    if t.numel() == 0:
        return t
    if not torch.isfinite(t).all():
        n = int((~torch.isfinite(t)).sum())
        raise InputError(f"{where}: {n} non-finite value(s) (NaN/inf); the data is corrupt")
    t_min, t_max = float(t.min()), float(t.max())
    if t_min < lo - _RANGE_TOL or t_max > hi + _RANGE_TOL:
        raise InputError(f"{where}: values span [{t_min:.4g}, {t_max:.4g}], expected [{lo:g}, {hi:g}]; rescale first")
    return t.clamp(lo, hi)


def _array_to_tensor(a: np.ndarray, where: str, lo: float, hi: float) -> torch.Tensor:
    """A numpy array as float32: uint8 scaled to [0, 1] (images only), float checked to lie in [lo, hi]."""
    if a.dtype == np.uint8 and lo == 0.0:
        return torch.from_numpy(a.astype(np.float32) / 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{where}: unsupported dtype {a.dtype}; give {'uint8 or ' if lo == 0.0 else ''}float values")
    return _check_range(torch.from_numpy(np.array(a, dtype=np.float32)), where, lo, hi)


def _channel_last(arr: Any, ndim: int, where: str, expected: str) -> np.ndarray:
    """``arr`` with a batch dim added if it has ``ndim - 1`` dims; checks 3 channels last and no empty dim."""
    a = np.asarray(arr)
    if a.ndim == ndim - 1:
        a = a[None]
    if a.ndim != ndim or a.shape[-1] != 3 or 0 in a.shape:
        raise InputError(f"{where}: expected an array of shape {expected}, got {np.shape(arr)}")
    return a


def _to_uint8(t: torch.Tensor, where: str) -> np.ndarray:
    return (_check_range(t.detach().float().cpu(), where, 0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


@dataclass
class _Batch:
    modality: ClassVar[str]
    prompts: list[str] | None = field(default=None, kw_only=True)
    metadata: list[dict[str, Any]] | None = field(default=None, kw_only=True)

    def _check_items(self, n: int) -> None:
        for name in ("prompts", "metadata"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise InputError(f"{type(self).__name__}: {len(value)} {name} for {n} items; give one per item")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def data(self) -> torch.Tensor:  # the main tensor, whatever the modality calls it
        raise NotImplementedError

    def _sub(self, data: torch.Tensor, index: list[int]) -> "_Batch":
        kw = {k: v for k, v in self.__dict__.items() if k not in ("pixels", "samples", "prompts", "metadata")}
        return type(self)(
            data,
            prompts=None if self.prompts is None else [self.prompts[i] for i in index],
            metadata=None if self.metadata is None else [self.metadata[i] for i in index],
            **kw,
        )

    def __getitem__(self, idx: int | slice | Sequence[int]) -> "_Batch":
        """Index items: an int, a slice or a list of ints always gives a batch."""
        n = len(self)
        if isinstance(idx, int):
            index = [range(n)[idx]]
        elif isinstance(idx, slice):
            index = list(range(n))[idx]
        else:
            index = [int(i) for i in idx]
        return self._sub(self.data[index], index)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "_Batch":
        index = list(range(len(self)))
        return self._sub(self.data.to(device=device, dtype=dtype), index)

    @classmethod
    def cat(cls, batches: Sequence["_Batch"]) -> "_Batch":
        """Concatenate batches of the same type (and fps / sample rate)."""
        if not batches:
            raise InputError(f"{cls.__name__}.cat: nothing to concatenate")
        first = batches[0]
        extra = {k: v for k, v in first.__dict__.items() if k not in ("pixels", "samples", "prompts", "metadata")}
        for b in batches[1:]:
            other = {k: v for k, v in b.__dict__.items() if k in extra}
            if other != extra:
                raise InputError(f"{cls.__name__}.cat: batches differ in {extra} vs {other}; resample first")
        data = torch.cat([b.data for b in batches])
        prompts = None if any(b.prompts is None for b in batches) else [p for b in batches for p in b.prompts]
        metadata = None if any(b.metadata is None for b in batches) else [m for b in batches for m in b.metadata]
        return cls(data, prompts=prompts, metadata=metadata, **extra)


@dataclass
class ImageBatch(_Batch):
    """Images ``[B, 3, H, W]`` in [0, 1]."""

    pixels: torch.Tensor
    modality: ClassVar[str] = "image"

    def __post_init__(self) -> None:
        self.pixels = _check_tensor(self.pixels, 4, "[B, 3, H, W]", "ImageBatch")
        if self.pixels.shape[1] != 3:
            raise InputError(f"ImageBatch: expected 3 channels (RGB) in dim 1, got shape {tuple(self.pixels.shape)}")
        self._check_items(self.pixels.shape[0])

    @property
    def data(self) -> torch.Tensor:
        return self.pixels

    @classmethod
    def from_numpy(cls, arr: Any, *, where: str = "array", **kw: Any) -> "ImageBatch":
        """Images from ``[H, W, 3]`` or ``[B, H, W, 3]``, uint8 or float in [0, 1]; ``kw`` go to the batch."""
        a = _channel_last(arr, 4, where, "[H, W, 3] or [B, H, W, 3]")
        return cls(_array_to_tensor(a, where, 0.0, 1.0).permute(0, 3, 1, 2).contiguous(), **kw)

    def to_numpy(self) -> np.ndarray:
        """``[B, H, W, 3]`` float32 in [0, 1]."""
        return self.pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy()

    @classmethod
    def from_pil(cls, images: Image.Image | Sequence[Image.Image], **kw: Any) -> "ImageBatch":
        """Images from one PIL image or a list of PIL images of one size (any mode, converted to RGB)."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        sizes = sorted({im.size for im in images})
        if len(sizes) != 1:
            raise InputError(f"ImageBatch.from_pil: need images of one size, got sizes {sizes}; resize them first")
        return cls.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images]), where="PIL images", **kw)

    def to_pil(self) -> list[Image.Image]:
        """One RGB PIL image per item."""
        return [Image.fromarray(a) for a in _to_uint8(self.pixels, "ImageBatch").transpose(0, 2, 3, 1)]


@dataclass
class VideoBatch(_Batch):
    """Videos ``[B, T, 3, H, W]`` in [0, 1] at ``fps`` frames per second."""

    pixels: torch.Tensor
    fps: float = 8.0
    modality: ClassVar[str] = "video"

    def __post_init__(self) -> None:
        self.pixels = _check_tensor(self.pixels, 5, "[B, T, 3, H, W]", "VideoBatch")
        if self.pixels.shape[2] != 3:
            raise InputError(f"VideoBatch: expected 3 channels (RGB) in dim 2, got shape {tuple(self.pixels.shape)}")
        if self.pixels.shape[1] == 0:
            raise InputError("VideoBatch: videos have zero frames")
        if not self.fps > 0:
            raise InputError(f"VideoBatch: fps must be positive, got {self.fps}")
        self._check_items(self.pixels.shape[0])

    @property
    def data(self) -> torch.Tensor:
        return self.pixels

    def frames(self, stride: int = 1) -> ImageBatch:
        """All frames (every ``stride``-th) as one image batch ``[B*T', 3, H, W]``, item-major."""
        px = self.pixels[:, ::stride]
        return ImageBatch(px.reshape(-1, *px.shape[2:]))

    @classmethod
    def from_numpy(cls, arr: Any, *, where: str = "array", **kw: Any) -> "VideoBatch":
        """Videos from ``[T, H, W, 3]`` or ``[B, T, H, W, 3]``, uint8 or float in [0, 1]; ``kw`` go to the batch."""
        a = _channel_last(arr, 5, where, "[T, H, W, 3] or [B, T, H, W, 3] with T > 0")
        return cls(_array_to_tensor(a, where, 0.0, 1.0).permute(0, 1, 4, 2, 3).contiguous(), **kw)

    def to_numpy(self) -> np.ndarray:
        """``[B, T, H, W, 3]`` float32 in [0, 1]."""
        return self.pixels.detach().float().cpu().permute(0, 1, 3, 4, 2).numpy()

    @classmethod
    def from_pil(cls, videos: Sequence[Sequence[Image.Image]], **kw: Any) -> "VideoBatch":
        """Videos from one list of PIL frames per video; all videos of one length and frame size."""
        videos = [list(v) for v in videos]
        shapes = sorted({(len(v), im.size) for v in videos for im in v})
        if len(shapes) != 1:
            raise InputError(f"VideoBatch.from_pil: need videos of one length and frame size, got (T, size) {shapes}")
        arr = np.stack([np.stack([np.asarray(im.convert("RGB")) for im in v]) for v in videos])
        return cls.from_numpy(arr, where="PIL frames", **kw)

    def to_pil(self) -> list[list[Image.Image]]:
        """One list of RGB PIL frames per video."""
        return [[Image.fromarray(f) for f in v] for v in _to_uint8(self.pixels, "VideoBatch").transpose(0, 1, 3, 4, 2)]


@dataclass
class AudioBatch(_Batch):
    """Audio ``[B, C, N]`` in [-1, 1] at ``sample_rate`` Hz."""

    samples: torch.Tensor
    sample_rate: int = 16000
    modality: ClassVar[str] = "audio"

    def __post_init__(self) -> None:
        self.samples = _check_tensor(self.samples, 3, "[B, C, N]", "AudioBatch")
        if self.samples.shape[2] == 0:
            raise InputError("AudioBatch: audio has zero samples")
        if not self.sample_rate > 0:
            raise InputError(f"AudioBatch: sample_rate must be positive, got {self.sample_rate}")
        self._check_items(self.samples.shape[0])

    @property
    def data(self) -> torch.Tensor:
        return self.samples

    @property
    def duration(self) -> float:
        return self.samples.shape[2] / self.sample_rate

    @classmethod
    def from_numpy(cls, arr: Any, *, where: str = "array", **kw: Any) -> "AudioBatch":
        """Audio from ``[N]`` (mono), ``[C, N]`` or ``[B, C, N]``, float in [-1, 1]; ``kw`` go to the batch."""
        a = np.asarray(arr)
        a = a[None, None] if a.ndim == 1 else a[None] if a.ndim == 2 else a
        if a.ndim != 3 or 0 in a.shape:
            raise InputError(f"{where}: expected an array of shape [N], [C, N] or [B, C, N] with N > 0, got {np.shape(arr)}")
        return cls(_array_to_tensor(a, where, -1.0, 1.0), **kw)

    def to_numpy(self) -> np.ndarray:
        """``[B, C, N]`` float32 in [-1, 1]."""
        return self.samples.detach().float().cpu().numpy()


Media = ImageBatch | VideoBatch | AudioBatch

