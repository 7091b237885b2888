"""Media batches: images, videos and audio as float tensors, with validation.

Layouts:

* :class:`ImageBatch` — ``pixels`` ``[B, 3, H, W]`` in [0, 1];
* :class:`VideoBatch` — ``pixels`` ``[B, T, 3, H, W]`` in [0, 1], plus ``fps``;
* :class:`AudioBatch` — ``samples`` ``[B, C, N]`` in [-1, 1], plus ``sample_rate``.

Each batch may carry per-item ``prompts`` and ``metadata``. Construction validates shape, dtype and
finiteness, so every consumer can trust a batch it receives. Items that differ in shape (photos of
different sizes, videos of different lengths) travel as a :class:`MediaList` of one-item batches;
:func:`concat` stacks items into one batch where they agree and makes a MediaList where they do not.

Conversions: ``from_numpy`` / ``to_numpy`` (channel-last for images and videos, as PIL and most image
code use them) and ``from_pil`` / ``to_pil``. Files: :func:`load_media` (PNG/JPEG/WebP with Pillow,
MP4/WebM/GIF with PyAV, WAV/FLAC/OGG/MP3 with soundfile, ``.npy`` in the item layout; the one
suffix table is :data:`IMAGE_EXTS` / :data:`VIDEO_EXTS` / :data:`AUDIO_EXTS`, :func:`modality_of`),
:func:`decode_image_bytes` (encoded bytes, as :func:`load_image` decodes files), :func:`load_folder`
(``ragged=True``: a MediaList of items at their own sizes),
:func:`save_media` (atomic), and previews: :func:`image_grid`, :func:`video_contact_sheet`. Loading
checks that a file is decodable, non-empty, finite and of the right shape; an :class:`InputError`
names the file and the problem. Nothing is resized, padded or resampled unless asked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import io
import json
import os
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from mmalign.errors import ConfigError, InputError
from mmalign.fileio import atomic_write

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
class _Batch(ABC):
    """What the three batch types share; each names its main tensor, its layout and its modality."""

    modality: ClassVar[str]
    layout: ClassVar[str]  # of the main tensor, e.g. "[B, 3, H, W]"
    _main: ClassVar[str] = "pixels"  # the main tensor's field
    _numpy_dims: ClassVar[tuple[int, ...]]  # permutation to the to_numpy() layout
    prompts: list[str] | None = field(default=None, kw_only=True)
    metadata: list[dict[str, Any]] | None = field(default=None, kw_only=True)

    def __init_subclass__(cls, modality: str | None = None, layout: str = "", numpy_dims: tuple[int, ...] = (),
                          **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if modality is not None:  # a subclass of ImageBatch & co. keeps its parent's
            cls.modality, cls.layout, cls._numpy_dims = modality, layout, numpy_dims

    def __post_init__(self) -> None:
        name = type(self).__name__
        setattr(self, self._main, _check_tensor(self.data, self.layout.count(",") + 1, self.layout, name))
        problem = self._problem()
        if problem:
            raise InputError(f"{name}: {problem}")
        for key in ("prompts", "metadata"):
            value = getattr(self, key)
            if value is not None and len(value) != len(self):
                raise InputError(f"{name}: {len(value)} {key} for {len(self)} items; give one per item")

    @abstractmethod
    def _problem(self) -> str | None:
        """What is wrong with a main tensor of the right rank (channels, empty axis, rate), if anything."""

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def data(self) -> torch.Tensor:
        """The main tensor, whatever the modality calls it (``pixels`` or ``samples``)."""
        return getattr(self, self._main)

    def _extra(self) -> dict[str, Any]:
        """The per-batch fields besides the tensor, prompts and metadata (``fps``, ``sample_rate``)."""
        return {k: v for k, v in self.__dict__.items() if k not in (self._main, "prompts", "metadata")}

    def _sub(self, data: torch.Tensor, index: list[int]) -> "_Batch":
        return type(self)(
            data,
            prompts=None if self.prompts is None else [self.prompts[i] for i in index],
            metadata=None if self.metadata is None else [self.metadata[i] for i in index],
            **self._extra(),
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

    def to_numpy(self) -> np.ndarray:
        """float32 items, channel-last for images ``[B, H, W, 3]`` and videos ``[B, T, H, W, 3]``; audio ``[B, C, N]``."""
        return self.data.detach().float().cpu().permute(*self._numpy_dims).numpy()

    @classmethod
    def cat(cls, batches: Sequence["_Batch"]) -> "_Batch":
        """Concatenate batches of the same type (and fps / sample rate)."""
        if not batches:
            raise InputError(f"{cls.__name__}.cat: nothing to concatenate")
        extra = batches[0]._extra()
        for b in batches[1:]:
            if b._extra() != extra:
                raise InputError(f"{cls.__name__}.cat: batches differ in {extra} vs {b._extra()}; resample first")
        data = torch.cat([b.data for b in batches])
        prompts = None if any(b.prompts is None for b in batches) else [p for b in batches for p in b.prompts]
        metadata = None if any(b.metadata is None for b in batches) else [m for b in batches for m in b.metadata]
        return cls(data, prompts=prompts, metadata=metadata, **extra)


@dataclass
class ImageBatch(_Batch, modality="image", layout="[B, 3, H, W]", numpy_dims=(0, 2, 3, 1)):
    """Images ``[B, 3, H, W]`` in [0, 1]."""

    pixels: torch.Tensor

    def _problem(self) -> str | None:
        if self.pixels.shape[1] != 3:
            return f"expected 3 channels (RGB) in dim 1, got shape {tuple(self.pixels.shape)}"
        return None

    @classmethod
    def from_numpy(cls, arr: Any, *, where: str = "array", **kw: Any) -> "ImageBatch":
        """Images from ``[H, W, 3]`` or ``[B, H, W, 3]``, uint8 or float in [0, 1]; ``kw`` go to the batch."""
        a = _channel_last(arr, 4, where, "[H, W, 3] or [B, H, W, 3]")
        return cls(_array_to_tensor(a, where, 0.0, 1.0).permute(0, 3, 1, 2).contiguous(), **kw)

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
class VideoBatch(_Batch, modality="video", layout="[B, T, 3, H, W]", numpy_dims=(0, 1, 3, 4, 2)):
    """Videos ``[B, T, 3, H, W]`` in [0, 1] at ``fps`` frames per second."""

    pixels: torch.Tensor
    fps: float = 8.0

    def _problem(self) -> str | None:
        if self.pixels.shape[2] != 3:
            return f"expected 3 channels (RGB) in dim 2, got shape {tuple(self.pixels.shape)}"
        if self.pixels.shape[1] == 0:
            return "videos have zero frames"
        return None if self.fps > 0 else f"fps must be positive, got {self.fps}"

    def frames(self, stride: int = 1) -> ImageBatch:
        """All frames (every ``stride``-th) as one image batch ``[B*T', 3, H, W]``, item-major."""
        px = self.pixels[:, ::stride]
        return ImageBatch(px.reshape(-1, *px.shape[2:]))

    @classmethod
    def from_numpy(cls, arr: Any, *, where: str = "array", **kw: Any) -> "VideoBatch":
        """Videos from ``[T, H, W, 3]`` or ``[B, T, H, W, 3]``, uint8 or float in [0, 1]; ``kw`` go to the batch."""
        a = _channel_last(arr, 5, where, "[T, H, W, 3] or [B, T, H, W, 3] with T > 0")
        return cls(_array_to_tensor(a, where, 0.0, 1.0).permute(0, 1, 4, 2, 3).contiguous(), **kw)

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
class AudioBatch(_Batch, modality="audio", layout="[B, C, N]", numpy_dims=(0, 1, 2)):
    """Audio ``[B, C, N]`` in [-1, 1] at ``sample_rate`` Hz."""

    _main: ClassVar[str] = "samples"
    samples: torch.Tensor
    sample_rate: int = 16000

    def _problem(self) -> str | None:
        if self.samples.shape[2] == 0:
            return "audio has zero samples"
        return None if self.sample_rate > 0 else f"sample_rate must be positive, got {self.sample_rate}"

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


Media = ImageBatch | VideoBatch | AudioBatch


def stack_key(batch: Media) -> tuple:
    """Batches with equal keys concatenate: same type, per-item shape, fps / sample rate."""
    return type(batch), tuple(batch.data.shape[1:]), tuple(sorted(batch._extra().items()))


@dataclass
class MediaList:
    """Items of one modality that may differ in shape (image sizes, frame counts, audio lengths).

    Held as one batch of one per item (``items``; batches of several items given to the
    constructor are split). It offers what scorers and pair data use of a batch: ``len``,
    ``modality``, ``prompts``, ``metadata``, indexing (always a MediaList), ``to`` and ``cat``.
    :func:`concat` builds one, or a stacked batch where the items agree in shape.
    """

    items: list[Media]

    def __post_init__(self) -> None:
        if isinstance(self.items, _Batch) or not all(isinstance(b, _Batch) for b in self.items):
            raise InputError("MediaList: expected a list of ImageBatch / VideoBatch / AudioBatch items")
        self.items = [b if len(b) == 1 else b[i] for b in self.items for i in range(len(b))]
        kinds = sorted({b.modality for b in self.items})
        if len(kinds) != 1:
            raise InputError(f"MediaList: needs items of one modality, got {kinds or 'none'}")

    @property
    def modality(self) -> str:
        return self.items[0].modality

    def __len__(self) -> int:
        return len(self.items)

    def _per_item(self, key: str) -> list | None:
        values = [getattr(b, key) for b in self.items]
        return None if any(v is None for v in values) else [v[0] for v in values]

    @property
    def prompts(self) -> list[str] | None:
        return self._per_item("prompts")

    @property
    def metadata(self) -> list[dict[str, Any]] | None:
        return self._per_item("metadata")

    def __getitem__(self, idx: int | slice | Sequence[int]) -> "MediaList":
        if isinstance(idx, int):
            return MediaList([self.items[idx]])
        if isinstance(idx, slice):
            return MediaList(self.items[idx])
        return MediaList([self.items[int(i)] for i in idx])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MediaList":
        return MediaList([b.to(device, dtype) for b in self.items])

    @classmethod
    def cat(cls, parts: Sequence["MediaList | Media"]) -> "MediaList":
        """The items of ``parts`` (lists or batches) in order, as one MediaList."""
        return cls([b for part in parts for b in (part.items if isinstance(part, MediaList) else [part])])


def concat(parts: Sequence[Media | MediaList]) -> Media | MediaList:
    """Items of batches and lists in order: one stacked batch if they agree in shape, else a :class:`MediaList`."""
    items = MediaList.cat(parts).items
    if len({stack_key(b) for b in items}) == 1:
        return type(items[0]).cat(items)
    return MediaList(items)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")  # Pillow
VIDEO_EXTS: tuple[str, ...] = (".mp4", ".webm", ".gif")  # PyAV
AUDIO_EXTS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")  # soundfile (libsndfile ≥ 1.1 reads MP3)
#: suffix → kind; ``.npy`` is one item in the to_numpy() layout: [H, W, 3], [T, H, W, 3] or [C, N] / [N]
EXTENSIONS: dict[str, str] = {
    **dict.fromkeys(IMAGE_EXTS, "image"), **dict.fromkeys(VIDEO_EXTS, "video"), **dict.fromkeys(AUDIO_EXTS, "audio"),
    ".npy": "array",
}
DEFAULT_FORMAT: dict[str, str] = {"image": "png", "video": "mp4", "audio": "wav"}
_DECODE_ERRORS = (OSError, ValueError, RuntimeError, SyntaxError, EOFError, IndexError, Image.DecompressionBombError)


def _checked_file(path: str | os.PathLike) -> tuple[Path, str]:
    """The path and its kind (image/video/audio/array), after checking it is a non-empty file we can read."""
    path = Path(path)
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown extension {path.suffix!r}; mmalign reads {', '.join(EXTENSIONS)}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; use load_folder() for folders")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    return path, kind


def _meta(path: Path) -> list[dict[str, Any]]:
    return [{"path": str(path), "name": path.stem}]


def modality_of(path: str | os.PathLike) -> str:
    """``"image" | "video" | "audio"`` of a media file, from its suffix (:data:`IMAGE_EXTS`, …)."""
    suffix = Path(path).suffix.lower()
    kind = EXTENSIONS.get(suffix)
    if kind not in MODALITIES:
        raise InputError(f"{path}: unknown media suffix {suffix!r}; use one of {', '.join(IMAGE_EXTS + VIDEO_EXTS + AUDIO_EXTS)}")
    return kind


def _decode_pil(source: Path | io.BytesIO, where: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an encoded image (file or bytes), EXIF orientation applied, any mode → RGB."""
    from PIL import ImageFile

    lenient = ImageFile.LOAD_TRUNCATED_IMAGES  # a process-wide flag some libraries turn on at import (VBench's AMT, pyiqa)
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error here, never padded with grey
        with Image.open(source) as im:
            im.load()
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except _DECODE_ERRORS as e:
        raise InputError(f"{where}: cannot decode image ({e}); the data is truncated, corrupt or not an image") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def decode_image_bytes(data: bytes, where: str = "image bytes") -> ImageBatch:
    """Encoded image bytes (PNG, JPEG, …; e.g. a Pick-a-Pic parquet cell) as an ImageBatch of one, like :func:`load_image`."""
    return ImageBatch.from_numpy(_decode_pil(io.BytesIO(data), where), where=where)


def load_image(path: str | os.PathLike) -> ImageBatch:
    """One image file (PNG/JPEG/WebP) as an ImageBatch of one; EXIF rotation applied, any mode → RGB."""
    path, _ = _checked_file(path)
    return ImageBatch.from_numpy(_decode_pil(path, str(path)), where=str(path), metadata=_meta(path))


def load_video(path: str | os.PathLike) -> VideoBatch:
    """One video file (MP4/WebM/GIF) as a VideoBatch of one, every frame decoded (PyAV), at its own fps."""
    import av

    path, _ = _checked_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream (zero frames)")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            rate, expected = stream.guessed_rate or stream.average_rate, stream.frames
    except InputError:
        raise
    except av.error.EOFError as e:
        raise InputError(f"{path}: the stream ends before its first frame (a zero-frame or truncated video)") from e
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: cannot decode video ({e}); the file is truncated or corrupt") from e
    if not frames:
        raise InputError(f"{path}: video has zero frames")
    if expected and len(frames) < expected:
        raise InputError(f"{path}: truncated video: decoded {len(frames)} of the {expected} frames its header lists")
    if len({f.shape for f in frames}) > 1:
        raise InputError(f"{path}: frame size changes within the video ({sorted({f.shape for f in frames})})")
    if not rate:
        raise InputError(f"{path}: the video has no frame rate")
    return VideoBatch.from_numpy(np.stack(frames), where=str(path), fps=float(rate), metadata=_meta(path))


def load_audio(path: str | os.PathLike) -> AudioBatch:
    """One audio file (WAV/FLAC/OGG/MP3) as an AudioBatch of one ``[1, C, N]`` at its own sample rate."""
    import soundfile as sf

    path, _ = _checked_file(path)
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: cannot decode audio ({e}); the file is truncated or corrupt") from e
    if data.shape[0] == 0:
        raise InputError(f"{path}: audio has zero samples")
    if path.suffix.lower() == ".wav" and _wav_is_truncated(path):
        raise InputError(f"{path}: truncated WAV: the file is shorter than its header says")
    return AudioBatch.from_numpy(data.T, where=str(path), sample_rate=int(sample_rate), metadata=_meta(path))


def _wav_is_truncated(path: Path) -> bool:
    """True if a RIFF/WAVE file is shorter than its header's size field (libsndfile reads such files quietly)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False  # RF64 / other layouts: libsndfile checks them
    declared = struct.unpack("<I", head[4:8])[0]
    if declared in (0, 0xFFFFFFFF):  # written by a streaming encoder that never knew the size
        return False
    return declared + 8 > path.stat().st_size


def load_array(path: str | os.PathLike, *, fps: float = 8.0, sample_rate: int = 16000) -> Media:
    """One ``.npy`` item in the ``to_numpy()`` layout: image ``[H, W, 3]``, video ``[T, H, W, 3]``
    (uint8 or float in [0, 1]) or audio ``[C, N]`` / ``[N]`` (float in [-1, 1])."""
    path, _ = _checked_file(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except _DECODE_ERRORS as e:
        raise InputError(f"{path}: cannot read the .npy file ({e}); it is truncated or not a plain array") from e
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return ImageBatch.from_numpy(arr, where=str(path), metadata=_meta(path))
    if arr.ndim == 4 and arr.shape[-1] == 3:
        return VideoBatch.from_numpy(arr, where=str(path), fps=fps, metadata=_meta(path))
    if arr.ndim in (1, 2):
        return AudioBatch.from_numpy(arr, where=str(path), sample_rate=sample_rate, metadata=_meta(path))
    raise InputError(
        f"{path}: array of shape {arr.shape} is no media item; expected image [H, W, 3], video [T, H, W, 3] "
        "or audio [C, N] / [N]"
    )


def load_media(path: str | os.PathLike, *, fps: float = 8.0, sample_rate: int = 16000) -> Media:
    """One file as a batch of one, chosen by extension (see :data:`EXTENSIONS`).

    ``fps`` and ``sample_rate`` are used only for ``.npy`` files, which do not store them. The item's
    metadata records its ``path`` and ``name`` (the file stem, which :func:`save_media` reuses).
    """
    _, kind = _checked_file(path)
    if kind == "image":
        return load_image(path)
    if kind == "video":
        return load_video(path)
    if kind == "audio":
        return load_audio(path)
    return load_array(path, fps=fps, sample_rate=sample_rate)


_PROMPT_KEYS = ("prompt", "caption", "text")
_FILE_KEYS = ("file", "path", "media", "image", "video", "audio")


def read_media_manifest(path: Path) -> dict[str, str]:
    """``{file name: prompt}`` from a media folder's JSONL manifest (keys ``file``/``path``… and ``prompt``/``caption``)."""
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        row = row if isinstance(row, dict) else {}
        f = next((row[k] for k in _FILE_KEYS if k in row), None)
        p = next((row[k] for k in _PROMPT_KEYS if k in row), None)
        if not isinstance(f, str) or not isinstance(p, str):
            raise InputError(f"{path}:{i}: a manifest row needs a file ({'/'.join(_FILE_KEYS)}) and a prompt ({'/'.join(_PROMPT_KEYS)})")
        out[Path(f).name] = p
    return out


@dataclass
class LoadReport:
    """What :func:`load_folder` did with each file of a folder."""

    folder: Path
    loaded: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why) of unreadable files
    ignored: list[Path] = field(default_factory=list)  # files that are not media of the loaded modality

    def __str__(self) -> str:
        lines = [f"{self.folder}: loaded {len(self.loaded)}, skipped {len(self.skipped)}, ignored {len(self.ignored)}"]
        lines += [f"  skipped {p.name}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


def load_folder(
    folder: str | os.PathLike,
    modality: Literal["image", "video", "audio"] | None = None,
    *,
    on_error: Literal["raise", "skip"] = "raise",
    size: int | tuple[int, int] | None = None,
    frames: int | None = None,
    length: int | None = None,
    recursive: bool = False,
    fps: float = 8.0,
    sample_rate: int = 16000,
    progress: bool = False,
    ragged: bool = False,
) -> tuple[Media | MediaList, LoadReport]:
    """Load every media file of a folder (sorted by path) into one batch, plus a :class:`LoadReport`.

    ``modality=None`` takes the one modality the folder's files have (an error if it mixes several).
    Files of other kinds or with unknown extensions (a manifest, a README) are ignored and listed in
    the report. An unreadable file raises, or with ``on_error="skip"`` is skipped and listed with
    the reason. Items must agree in shape: images of different sizes raise unless ``size=`` (an int
    or ``(H, W)``) resizes them; videos likewise, and their frame counts must agree unless
    ``frames=`` trims or pads (by repeating the last frame); audio lengths unless ``length=`` trims or
    pads with silence. Frame rates, sample rates and channel counts must agree. ``fps`` and
    ``sample_rate`` apply to ``.npy`` files only. ``ragged=True`` keeps every item as it is and
    returns a :class:`MediaList` when they differ in any of these (one batch when they agree): the
    form scorers take, as each preprocesses every item on its own.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"load_folder: on_error must be 'raise' or 'skip', got {on_error!r}")
    if modality not in (None, *MODALITIES):
        raise ConfigError(f"load_folder: modality must be one of {MODALITIES} or None, got {modality!r}")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file() and not p.name.startswith("."))
    kinds = {p: EXTENSIONS.get(p.suffix.lower()) for p in files}
    if modality is None:
        found = {k: sum(v == k for v in kinds.values()) for k in MODALITIES if k in kinds.values()}
        if len(found) > 1:
            mix = ", ".join(f"{n} {k}" for k, n in found.items())
            raise InputError(f"{folder}: the folder mixes {mix} files; pass modality= to load one kind")
        modality = next(iter(found), None)
    report = LoadReport(folder)
    items: list[Media] = []
    for p in tqdm(files, desc=f"loading {folder.name}", disable=not progress):
        if kinds[p] not in ("array", modality):
            report.ignored.append(p)
            continue
        try:
            item = load_media(p, fps=fps, sample_rate=sample_rate)
            if modality is not None and item.modality != modality:
                raise InputError(f"{p}: holds {item.modality} data, but the folder's media are {modality}")
        except InputError as e:
            if on_error == "raise":
                raise
            report.skipped.append((p, str(e).removeprefix(f"{p}: ")))
            continue
        modality = item.modality
        items.append(item)
        report.loaded.append(p)
    if not items:
        raise InputError(f"{folder}: no loadable {modality or 'media'} files\n{report}")
    return _harmonize(items, folder, size=size, frames=frames, length=length, ragged=ragged), report


def _mismatch(folder: Path, what: str, items: list[Media], key: Callable[[Media], Any], fix: str) -> None:
    """Raise if ``key`` differs between items, naming the first file and the first one that differs."""
    first = key(items[0])
    for item in items[1:]:
        if key(item) != first:
            a, b = items[0].metadata[0]["path"], item.metadata[0]["path"]
            raise InputError(f"{folder}: {what} differ: {a} has {first}, {b} has {key(item)}; {fix}")


def _harmonize(items: list[Media], folder: Path, *, size: Any, frames: int | None, length: int | None,
               ragged: bool = False) -> Media | MediaList:
    """Resize / trim / pad the items of a folder where asked, check they agree in shape (unless
    ``ragged``), then concatenate them (:func:`concat`: a MediaList if ragged items still differ)."""
    cls = type(items[0])
    if cls is VideoBatch and frames is not None:
        items = [_fit_length(b, frames, dim=1) for b in items]
    if cls is AudioBatch and length is not None:
        items = [_fit_length(b, length, dim=2) for b in items]
    if cls in (ImageBatch, VideoBatch) and size is not None:
        items = [resize(b, size) for b in items]
    if ragged:
        return concat(items)
    if cls is VideoBatch:
        _mismatch(folder, "frame rates", items, lambda b: b.fps, "load videos of different fps separately")
        _mismatch(folder, "frame counts", items, lambda b: b.pixels.shape[1], "pass frames=N to trim or pad them")
    if cls is AudioBatch:
        _mismatch(folder, "sample rates", items, lambda b: b.sample_rate, "resample them to one rate first")
        _mismatch(folder, "channel counts", items, lambda b: b.samples.shape[1], "convert them to one layout first")
        _mismatch(folder, "lengths (samples)", items, lambda b: b.samples.shape[2], "pass length=N to trim or pad them")
    if cls in (ImageBatch, VideoBatch):
        _mismatch(folder, "sizes (H, W)", items, lambda b: tuple(b.pixels.shape[-2:]), "pass size=(H, W) to resize them")
    return cls.cat(items)


def _fit_length(batch: Media, n: int, dim: int) -> Media:
    """Trim to ``n`` along ``dim``, or pad: videos repeat their last frame, audio gets silence."""
    if n <= 0:
        raise ConfigError(f"frames/length must be positive, got {n}")
    x = batch.data
    if x.shape[dim] >= n:
        x = x.narrow(dim, 0, n)
    else:
        pad = x.narrow(dim, x.shape[dim] - 1, 1) if dim == 1 else torch.zeros_like(x.narrow(dim, 0, 1))
        x = torch.cat([x, pad.expand(*[n - x.shape[dim] if d == dim else -1 for d in range(x.ndim)])], dim)
    return batch._sub(x, list(range(len(batch))))


def resize(batch: ImageBatch | VideoBatch, size: int | tuple[int, int]) -> ImageBatch | VideoBatch:
    """Images or video frames resized to ``size`` (``(H, W)``, or an int for square), bilinear with antialiasing."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ConfigError(f"size must be a positive int or (H, W), got {size!r}")
    px = batch.pixels
    if tuple(px.shape[-2:]) == hw:
        return batch
    flat = px.reshape(-1, *px.shape[-3:]).float()
    out = torch.nn.functional.interpolate(flat, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return batch._sub(out.clamp(0, 1).reshape(*px.shape[:-2], *hw).to(px.dtype), list(range(len(batch))))


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------

_PIL_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
}
_VIDEO_CODECS: dict[str, tuple[str, str]] = {".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9")}
_AUDIO_SUBTYPES: dict[str, str] = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}


def _write_video(frames: np.ndarray, fps: float, path: Path, ext: str, crf: int) -> None:
    """``frames`` ``[T, H, W, 3]`` uint8 to MP4 (H.264) / WebM (VP9) / GIF (per-frame adaptive palette)."""
    import av

    height, width = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1001)
    if ext == ".gif":
        with av.open(str(path), "w", format="gif") as container:
            stream = container.add_stream("gif", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "pal8"
            for f in frames:
                q = Image.fromarray(f).quantize(256, method=Image.Quantize.MEDIANCUT)
                palette = np.zeros((256, 4), np.uint8)
                palette[:, 0] = 255  # alpha; PyAV takes the palette as ARGB
                rgb = np.asarray(q.getpalette()[:768], np.uint8).reshape(-1, 3)
                palette[: len(rgb), 1:] = rgb
                container.mux(stream.encode(av.VideoFrame.from_ndarray((np.asarray(q), palette), format="pal8")))
            container.mux(stream.encode())
        return
    fmt, codec = _VIDEO_CODECS[ext]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf), "b": "0"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def _item_names(batch: Media, names: Sequence[str] | None) -> list[str]:
    if names is None:
        meta = batch.metadata or []
        stems = [m.get("name") if isinstance(m, dict) else None for m in meta]
        if len(stems) == len(batch) and all(isinstance(s, str) and s for s in stems) and len(set(stems)) == len(stems):
            return stems
        return [f"{i:05d}" for i in range(len(batch))]
    names = [str(n) for n in names]
    if len(names) != len(batch):
        raise InputError(f"save_media: {len(names)} names for {len(batch)} items; give one name per item")
    bad = [n for n in names if not n or "/" in n or os.sep in n or n.startswith(".")]
    if bad:
        raise InputError(f"save_media: names must be plain file names, got {bad[:3]}")
    if len(set(names)) != len(names):
        raise InputError("save_media: names must be unique")
    return names


def save_media(
    batch: Media,
    folder: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    format: str | None = None,
    crf: int = 12,
) -> list[Path]:
    """Write one file per item into ``folder`` (created if needed) and return the paths.

    Names default to the items' ``metadata["name"]`` (set by the loaders) or ``00000``, ``00001``, ….
    A name with a known extension picks its own format; otherwise ``format`` (e.g. ``"jpg"``,
    ``"webm"``, ``"flac"``, ``"npy"``) or the modality's default (PNG, MP4, WAV). Each file is written
    to a hidden temp file and renamed, so no reader ever sees half a file. ``crf`` sets MP4/WebM
    quality (lower is better; 12 keeps the synthetic world's colors). WAV and FLAC audio is 16-bit PCM,
    OGG is Vorbis, MP3 is MPEG layer III.
    """
    folder = Path(folder)
    default = "." + (format or DEFAULT_FORMAT[batch.modality]).lower().lstrip(".")
    if EXTENSIONS.get(default) not in (batch.modality, "array"):
        raise InputError(f"save_media: cannot write {batch.modality} items as {default!r}")
    # check every item before writing any, so a bad item does not leave half a batch on disk
    paths = []
    lo = -1.0 if batch.modality == "audio" else 0.0
    for i, name in enumerate(_item_names(batch, names)):
        kind = EXTENSIONS.get(Path(name).suffix.lower())
        if kind not in (None, batch.modality, "array"):
            raise InputError(f"save_media: cannot write {batch.modality} item {i} as {name!r} (a {kind} format)")
        path = folder / name if kind else folder / f"{name}{default}"
        where = f"{type(batch).__name__} item {i} ({path.name})"
        _check_range(batch.data[i].detach().float().cpu(), where, lo, 1.0)
        height, width = batch.data.shape[-2:]
        if path.suffix.lower() in _VIDEO_CODECS and (height % 2 or width % 2):
            raise InputError(f"{where}: {path.suffix} (yuv420p) needs an even width and height, got {width}x{height}; resize or save as .gif")
        paths.append(path)
    if len(set(paths)) != len(paths):
        raise InputError(f"save_media: two items would be written to the same file: {[p.name for p in paths]}")
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        ext = path.suffix.lower()
        data = batch.data[i].detach().float().cpu().clamp(lo, 1.0)
        if ext == ".npy":
            arr = batch[i].to_numpy()[0].clip(lo, 1.0)
            atomic_write(path, lambda tmp: np.save(tmp, arr))
        elif batch.modality == "image":
            pil_format, options = _PIL_OPTIONS[ext]
            image = Image.fromarray(_to_uint8(data, path.name).transpose(1, 2, 0))
            atomic_write(path, lambda tmp: image.save(tmp, format=pil_format, **options))
        elif batch.modality == "video":
            frames = _to_uint8(data, path.name).transpose(0, 2, 3, 1)
            atomic_write(path, lambda tmp: _write_video(frames, batch.fps, tmp, ext, crf))
        else:
            import soundfile as sf

            fmt, subtype = ext.lstrip(".").upper(), _AUDIO_SUBTYPES[ext]
            atomic_write(path, lambda tmp: sf.write(str(tmp), data.numpy().T, batch.sample_rate, subtype=subtype, format=fmt))
    return paths


# --------------------------------------------------------------------------------------------------
# Previews
# --------------------------------------------------------------------------------------------------


def _tile(px: torch.Tensor, ncol: int, padding: int, pad_value: float) -> Image.Image:
    """``px`` ``[N, 3, H, W]`` tiled row-major, ``ncol`` per row, as one PIL image."""
    n, _, h, w = px.shape
    nrows = -(-n // ncol)
    canvas = torch.full((3, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[:, y : y + h, x : x + w] = px[i].detach().float().cpu()
    return Image.fromarray(_to_uint8(canvas, "grid").transpose(1, 2, 0))


def image_grid(batch: ImageBatch, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Image.Image:
    """The images tiled into one PIL image, ``nrow`` images per row (as torchvision's ``make_grid``)."""
    if not isinstance(batch, ImageBatch):
        raise InputError(f"image_grid: expected an ImageBatch, got {type(batch).__name__} (videos: video_contact_sheet)")
    if nrow < 1:
        raise ConfigError(f"image_grid: nrow must be >= 1, got {nrow}")
    return _tile(batch.pixels, min(nrow, len(batch)), padding, pad_value)


def video_contact_sheet(
    batch: VideoBatch, frames: int | Sequence[int] = 8, padding: int = 2, pad_value: float = 1.0
) -> Image.Image:
    """One row per video, one column per frame: ``frames`` evenly spaced frames, or these frame indices."""
    if not isinstance(batch, VideoBatch):
        raise InputError(f"video_contact_sheet: expected a VideoBatch, got {type(batch).__name__}")
    t = batch.pixels.shape[1]
    if isinstance(frames, int):
        if frames < 1:
            raise ConfigError(f"video_contact_sheet: frames must be >= 1, got {frames}")
        index = np.linspace(0, t - 1, min(frames, t)).round().astype(int).tolist()
    else:
        index = [int(i) for i in frames]
        if not index or any(not -t <= i < t for i in index):
            raise InputError(f"video_contact_sheet: frame indices {index} out of range for {t} frames")
    px = batch.pixels[:, index]
    return _tile(px.reshape(-1, *px.shape[2:]), len(index), padding, pad_value)
