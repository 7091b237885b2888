"""The :class:`Scorer` interface: ``score``, ``compare`` and ``rank`` for any media.

Subclasses implement one method, :meth:`Scorer._score_batch` (a chunk of media of a modality the
scorer supports, plus one prompt per item → ``Tensor[b]``). This class does everything else once:
input checks, prompt broadcasting, batching, progress, ``no_grad`` unless ``differentiable=True``,
the compute dtype and frame aggregation for image scorers given videos (``video.py``).

Precision: the weights of :meth:`Scorer.compute_modules` are cast to ``dtype`` once
(:func:`mmalign.devices.cast_weights`), and a subclass casts its model input to ``dtype`` once per
batch; there is no per-op autocast (on a CPU it is slower than fp32). Scores are fp32.
``dtype="auto"`` decides from the device and the size of the compute modules
(:func:`mmalign.devices.auto_dtype`). A subclass sets its modules *before* calling
``Scorer.__init__``, which moves them to the device and casts them.

Items of different sizes come as a :class:`~mmalign.media.MediaList` (or a plain list of
batches). By default :meth:`Scorer._score_items` scores each run of equal-shaped items of a chunk
as one batch; a scorer that brings every item to one shape itself (CLIP's resize and crop)
overrides it to preprocess each item on its own and then batch the results.

Scorers are built from cards by *family builders* registered in :data:`SCORER_FAMILIES`::

    @SCORER_FAMILIES.register("my_family")
    def build_my_family(card: ScorerCard, local_files_only: bool | None = None, **kw) -> Scorer: ...

A builder finds its own weights (``mmalign.scoring.weights.resolve_checkpoint``, if it has any)
and passes ``kw`` (``name``, ``device``, ``dtype``, ``bt_scale``, ``video_reduce``,
``video_stride``, ``video_captions``, ``video_still_weight`` and the caller's overrides) on to its :class:`Scorer`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from mmalign.devices import cast_weights, dtype_name, num_parameters, resolve_device, resolve_dtype
from mmalign.errors import ConfigError, InputError
from mmalign.media import AudioBatch, ImageBatch, MediaList, VideoBatch, concat, stack_key
from mmalign.registry import Registry
from mmalign.scoring.card import ScorerCard

Media = ImageBatch | VideoBatch | AudioBatch | MediaList
ScorerBuilder = Callable[..., "Scorer"]  # (card, local_files_only=None, **kw) -> Scorer

#: architecture.family of a scorer card -> the function that builds its scorer
SCORER_FAMILIES: Registry[ScorerBuilder] = Registry("scorer family")


def as_media(media: Media | Sequence[Media] | torch.Tensor) -> Media:
    """Accept a media batch, a MediaList, a list of batches (items of different sizes: a MediaList
    unless they share one shape) or a raw pixel tensor ``[B,3,H,W]`` / ``[B,T,3,H,W]`` (keeps autograd)."""
    if isinstance(media, (ImageBatch, VideoBatch, AudioBatch, MediaList)):
        return media
    if isinstance(media, (list, tuple)) and media and all(isinstance(m, (ImageBatch, VideoBatch, AudioBatch)) for m in media):
        return concat(media)
    if isinstance(media, torch.Tensor):
        if media.ndim == 4:
            return ImageBatch(media)
        if media.ndim == 5:
            return VideoBatch(media)
        raise InputError(f"a raw tensor must be images [B,3,H,W] or videos [B,T,3,H,W]; got shape {tuple(media.shape)} "
                         "(wrap audio in AudioBatch to give its sample rate)")
    raise InputError(f"expected ImageBatch, VideoBatch, AudioBatch, MediaList (or a list of batches) or a pixel tensor; "
                     f"got {type(media).__name__}")


def check_prompts(prompts: str | Sequence[str] | None, n: int, media: Media | None = None, needed: bool = True) -> list[str]:
    """One prompt per item: a list of ``n`` strings, a single string (used for all items) or the batch's own."""
    if prompts is None and media is not None:
        prompts = media.prompts
    if prompts is None:
        if needed:
            raise InputError(f"no prompts: pass prompts= (one per item, {n} items) or a batch that carries .prompts")
        return [""] * n
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise InputError(f"{len(prompts)} prompts for {n} media items; give exactly one prompt per item (or one string for all)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is a {type(p).__name__}, not a string")
    return prompts


class Scorer:
    """A learned preference scorer, loaded once; see the module docstring.

    Attributes: ``name``, ``modalities`` (what ``score`` accepts; image scorers also accept videos,
    scored by frame aggregation unless ``native_video``), ``needs_prompts``,
    ``bt_scale`` (β of ``compare``), ``video_reduce`` / ``video_stride`` / ``video_captions`` /
    ``video_still_weight`` (frame aggregation, :func:`mmalign.scoring.video.score_video_frames`),
    ``device``, ``dtype`` (compute dtype of :meth:`compute_modules`, whose weights are cast to it),
    ``card`` (or None).
    """

    modalities: tuple[str, ...] = ("image",)
    needs_prompts: bool = True
    native_video: bool = False  # False: videos are scored frame by frame (video.py) by an image scorer

    def __init__(self, *, name: str = "scorer", device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                 bt_scale: float = 1.0, video_reduce: str = "mean", video_stride: int = 1, video_captions: str | None = None,
                 video_still_weight: float = 0.0, card: ScorerCard | None = None):
        self.name = name
        self.device = resolve_device(device)
        self.dtype = torch.float32  # the weights as built; `to` casts them
        self.to(self.device, resolve_dtype(None, self.device) if dtype is None else dtype)
        self.bt_scale = float(bt_scale)
        self.video_reduce = video_reduce
        self.video_stride = int(video_stride)
        self.video_captions = video_captions
        self.video_still_weight = float(video_still_weight)
        self.card = card

    # -- what subclasses implement ------------------------------------------------------------
    def _score_batch(self, media: Media, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _score_batch")

    def _score_items(self, items: MediaList, prompts: list[str]) -> torch.Tensor:
        """A chunk of items that may differ in shape: each run of equal-shaped items as one :meth:`_score_batch`."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items.items):
            groups.setdefault(stack_key(item), []).append(i)
        scores = [self._score_batch(concat(items[index].items), [prompts[i] for i in index]).float().to(self.device)
                  for index in groups.values()]
        order = torch.tensor([i for index in groups.values() for i in index], device=self.device)
        return torch.cat(scores)[torch.argsort(order)]

    def embeddings(self, media: Media, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw embeddings ``[B, D]`` of a batch's items and ``[U, D]`` of ``texts``, with gradients: two-tower
        scorers (CLIP, CLAP) implement it for contrastive training (:func:`mmalign.scoring.train.caption_logits`)."""
        raise ConfigError(f"{type(self).__name__} is not a two-tower scorer with item and text embeddings; "
                          "contrastive (caption) training needs a CLIP or CLAP scorer")

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules to move with :meth:`to` (subclasses list theirs)."""
        return []

    def compute_modules(self) -> list[torch.nn.Module]:
        """The modules that compute in :attr:`dtype` (their weights are cast); default: all of :meth:`modules`."""
        return self.modules()

    # -- public API ----------------------------------------------------------------------------
    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "Scorer":
        """Move the modules to ``device`` and cast the compute modules' weights to ``dtype`` (or ``"auto"``)
        once. Casting down is one way: a bf16 scorer cast back to fp32 would keep bf16-rounded weights,
        so that is an error (reload it with ``dtype="fp32"``)."""
        if device is not None:
            self.device = resolve_device(device)
            for m in self.modules():
                m.to(self.device)
        if dtype is not None:
            compute = self.compute_modules()
            new = resolve_dtype(dtype, self.device, params=num_parameters(compute) if compute else 0,
                                what=f"scorer {self.name!r}")
            if compute and new.itemsize > self.dtype.itemsize:
                raise ConfigError(f"scorer {self.name!r} computes in {self.dtype}; casting its weights up to {new} "
                                  f"would not restore their precision. Load it again with dtype={dtype_name(new)!r}")
            for m in compute:
                cast_weights(m, new)
            self.dtype = new
        return self

    def check_modality(self, media: Media) -> None:
        if media.modality in self.modalities:
            return
        if media.modality == "video" and "image" in self.modalities:
            return  # frame aggregation
        raise InputError(f"scorer {self.name!r} scores {'/'.join(self.modalities)}, not {media.modality}; "
                         f"choose a scorer whose card lists {media.modality!r} in modalities (see mmalign.list_scorers())")

    def score(self, media: Media | Sequence[Media] | torch.Tensor, prompts: str | Sequence[str] | None = None, *,
              batch_size: int = 32, progress: bool | None = None, differentiable: bool = False) -> torch.Tensor:
        """Score each item against its prompt → ``Tensor[B]`` (float32, on ``self.device``).

        ``media`` may hold items of different sizes (a MediaList or a list of batches): each item
        scores as it would alone.

        ``differentiable=True`` keeps the autograd graph so gradients reach the input pixels
        (reward-gradient methods); otherwise everything runs under ``torch.no_grad``.
        """
        media = as_media(media)
        self.check_modality(media)
        prompts = check_prompts(prompts, len(media), media, self.needs_prompts)
        if batch_size < 1:
            raise InputError(f"batch_size must be ≥ 1, got {batch_size}")
        if media.modality == "video" and not self.native_video:
            from mmalign.scoring.video import score_video_frames

            return score_video_frames(self, media, prompts, reduce=self.video_reduce, stride=self.video_stride, captions=self.video_captions,
                                      still_weight=self.video_still_weight, batch_size=batch_size, progress=progress, differentiable=differentiable)
        starts = range(0, len(media), batch_size)
        show = progress if progress is not None else len(media) > 8 * batch_size
        out = []
        grad = contextlib.nullcontext() if differentiable else torch.no_grad()
        with grad:
            for s in tqdm(starts, desc=f"scoring ({self.name})", disable=not show, unit="batch"):
                chunk, p = media[s : s + batch_size].to(self.device), prompts[s : s + batch_size]
                scores = self._score_items(chunk, p) if isinstance(chunk, MediaList) else self._score_batch(chunk, p)
                out.append(scores.float())
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def compare(self, a: Media | torch.Tensor, b: Media | torch.Tensor, prompts: str | Sequence[str] | None = None,
                **kw) -> torch.Tensor:
        """P(a ≻ b) per item, Bradley-Terry on scores: σ(β·(s_a − s_b)), β = ``bt_scale`` (from the card)."""
        a, b = as_media(a), as_media(b)
        if len(a) != len(b):
            raise InputError(f"compare: {len(a)} items in a but {len(b)} in b; pair them one to one")
        p = check_prompts(prompts, len(a), a, self.needs_prompts)
        return torch.sigmoid(self.bt_scale * (self.score(a, p, **kw) - self.score(b, p, **kw)))

    def item_details(self, media: Media | torch.Tensor, prompts: str | Sequence[str] | None = None) -> list[dict[str, float]]:
        """Named per-item results beyond ``score``, one mapping per item (an oracle's per-skill checks,
        1.0 = pass); empty mappings by default. An item lacks a name its prompt does not test."""
        return [{} for _ in range(len(as_media(media)))]

    def details(self, media: Media | torch.Tensor, prompts: str | Sequence[str] | None = None) -> dict[str, float]:
        """Batch means of :meth:`item_details`, each over the items that have it (an oracle's per-skill accuracies)."""
        totals: dict[str, list[float]] = {}
        for item in self.item_details(media, prompts):
            for k, v in item.items():
                totals.setdefault(k, []).append(float(v))
        return {k: sum(v) / len(v) for k, v in sorted(totals.items())}

    def rank(self, groups: Sequence[tuple[Media | torch.Tensor, str]], **kw) -> list[torch.Tensor]:
        """For each ``(media, prompt)`` group (k candidates for one prompt): indices best first."""
        orders = []
        for i, group in enumerate(groups):
            if not (isinstance(group, tuple) and len(group) == 2 and isinstance(group[1], str)):
                raise InputError(f"rank: group {i} must be a (media, prompt) tuple, got {type(group).__name__}")
            media, prompt = group
            orders.append(torch.argsort(self.score(media, prompt, **kw), descending=True, stable=True))
        return orders

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, modalities={self.modalities}, device={self.device}, dtype={self.dtype})"
