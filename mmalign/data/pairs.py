"""Preference data: pairs (prompt, chosen, rejected, label), k-wise rankings (prompt, items, scores) and samples.

The schemas (one direction: higher = better), written by ``mmalign pairs`` (and ``mmalign selma``) and read
unchanged by ``mmalign train`` and ``mmalign train-scorer``:

* a **pair** ``{"prompt", "chosen", "rejected", "label"?}``: ``label`` = P(chosen ≻ rejected) ∈ {1, 0.5, 0}
  (0.5 = tie; default 1);
* a **ranking** ``{"prompt", "items": [...], "scores": [...]}``: k ≥ 2 items, higher score = better
  (e.g. Syn-Pic win rates);
* a **sample** ``{"prompt", "media"}``: one kept item, for supervised fine-tuning (``method: sft``, e.g.
  SELMA's skill data); read as a ranking of k = 1.

Readers:

* :func:`read_pickapic` — Pick-a-Pic-style parquet (``jpg_0, jpg_1, label_0, caption``; image bytes): a
  file, a folder of shards or a cached hub dataset id, read row group by row group with each image a lazy
  :class:`~mmalign.data.pickapic.ParquetRef` (:mod:`mmalign.data.pickapic`), so memory does not grow with the
  image bytes. ``label_0`` ∈ {1, 0, 0.5}; the winner is put first; ties (0.5) are dropped (``ties="drop"``, as
  the official Diffusion-DPO ``train.py`` L855–863 does) or kept with label 0.5 (``ties="keep"``) —
  never silently counted as a win of ``jpg_0``, as the diffusers Diffusion-DPO example loader does.
* :func:`read_manifest` — a JSONL manifest of pairs or of rankings (not both) of media files
  (image, video or audio; paths relative to the manifest), one record per line.
* :func:`read_preferences` — either, by file suffix.

A media reference is a path, encoded image bytes or a parquet cell; :meth:`PairDataset.load` decodes it into a
one-item media batch (:func:`mmalign.media.load_media` / :func:`mmalign.media.decode_image_bytes`),
resized and centre-cropped to ``resolution`` for images and videos.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F

from mmalign.data.pickapic import PICKAPIC_COLUMNS, ParquetRef, cell_key, is_hub_id, parquet_files, read_cell, scan_rows
from mmalign.errors import InputError
from mmalign.media import ImageBatch, Media, VideoBatch, decode_image_bytes, load_media, modality_of

MediaRef = str | bytes | ParquetRef
TIES = ("drop", "keep")
#: the manifest a data folder is read from, in this order
MANIFESTS = ("pairs.jsonl", "rankings.jsonl", "samples.jsonl")


@dataclass(frozen=True)
class Pair:
    """One preference pair; ``label`` = P(chosen ≻ rejected): 1 = chosen wins, 0.5 = tie."""

    prompt: str
    chosen: MediaRef
    rejected: MediaRef
    label: float = 1.0
    margin: float | None = None  # how far the data's scorer put chosen above rejected (``mmalign pairs``), if known


@dataclass(frozen=True)
class Ranking:
    """A prompt with k items and their graded scores (higher = better; e.g. win rates ψ in [0, 1])."""

    prompt: str
    items: tuple[MediaRef, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Fit:
    """How each image or video is fitted before encoding: resize the short side to ``resolution``, then
    a centre crop (the official Diffusion-DPO ``train.py`` L772–790) or, with ``random_crop``, a crop at
    a random offset, and with ``random_flip`` a horizontal flip half of the time (the ``--random_flip`` /
    non-``--center_crop`` transforms of diffusers' ``train_diffusion_dpo_sdxl.py`` @ 58eb52c0). The random
    choices are a fixed function of each item's identity, so cached latents stay valid."""

    resolution: FitArg = None
    random_crop: bool = False
    random_flip: bool = False


FitArg = int | Fit | None


def as_fit(fit: FitArg) -> Fit:
    return fit if isinstance(fit, Fit) else Fit(fit)


def fit_resolution(media: Media, fit: FitArg, key: str = "") -> Media:
    """Fit ``media`` per ``fit`` (an int: centre crop to that square size) and record SDXL's
    micro-conditioning in each item's metadata: ``original_size`` (h, w) before resizing and
    ``crop_top_left`` (top, left) in the resized image (Podell et al. 2023, §2.2). ``key`` seeds the
    random crop and flip. Audio and ``resolution=None`` pass through unchanged."""
    fit = as_fit(fit)
    if fit.resolution is None or media.modality == "audio":
        return media
    res = fit.resolution
    px = media.pixels
    lead = px.shape[:-3]
    flat = px.reshape(-1, *px.shape[-3:])
    h, w = flat.shape[-2:]
    scale = res / min(h, w)
    nh, nw = max(res, round(h * scale)), max(res, round(w * scale))
    if (nh, nw) != (h, w):
        flat = F.interpolate(flat, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    g = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))
    if fit.random_flip and bool(torch.rand(1, generator=g) < 0.5):
        flat = flat.flip(-1)
    if fit.random_crop:
        top, left = (int(torch.randint(0, n - res + 1, (1,), generator=g)) for n in (nh, nw))
    else:
        top, left = (nh - res) // 2, (nw - res) // 2
    out = flat[..., top : top + res, left : left + res].reshape(*lead, 3, res, res)
    metadata = [{**(m or {}), "original_size": (int(h), int(w)), "crop_top_left": (top, left)}
                for m in (media.metadata or [None] * len(media))]
    if isinstance(media, VideoBatch):
        return VideoBatch(out, fps=media.fps, prompts=media.prompts, metadata=metadata)
    return ImageBatch(out, prompts=media.prompts, metadata=metadata)


T = TypeVar("T", Pair, Ranking)


class _Dataset(Generic[T]):
    """A list of pairs or rankings whose media references are loaded and fingerprinted relative to ``root``."""

    def __init__(self, entries: Sequence[T], root: Path | None, source: str, resolution: FitArg) -> None:
        self.entries, self.root, self.source, self.fit = list(entries), root, source, as_fit(resolution)

    @property
    def resolution(self) -> int | None:
        return self.fit.resolution

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> T:
        return self.entries[i]

    def __iter__(self) -> Iterator[T]:
        return iter(self.entries)

    def resolve(self, ref: MediaRef) -> MediaRef:
        if not isinstance(ref, str) or self.root is None or os.path.isabs(ref):
            return ref
        return str(self.root / ref)

    def load(self, ref: MediaRef) -> Media:
        """Decode one reference into a one-item media batch, fitted per :attr:`fit` (:func:`fit_resolution`)."""
        ref = self.resolve(ref)
        if isinstance(ref, bytes):
            media = decode_image_bytes(ref, where=self.source)
        elif isinstance(ref, ParquetRef):
            media = decode_image_bytes(read_cell(ref), where=str(ref))
        elif not os.path.exists(ref):
            raise InputError(f"{self.source}: media file {ref} does not exist; fix the manifest path")
        else:
            media = load_media(ref)
        return fit_resolution(media, self.fit, self.ref_key(ref) if self.fit.random_crop or self.fit.random_flip else "")

    def ref_key(self, ref: MediaRef) -> str:
        """A stable identity of a reference: a content hash for bytes, path + size + mtime for files
        (and for a parquet cell, plus its row group, row and column)."""
        ref = self.resolve(ref)
        if isinstance(ref, bytes):
            return "sha1:" + hashlib.sha1(ref).hexdigest()
        if isinstance(ref, ParquetRef):
            return cell_key(ref)
        st = os.stat(ref)
        return f"file:{os.path.abspath(ref)}:{st.st_size}:{st.st_mtime_ns}"

    def _records(self) -> Iterable[tuple[str, Sequence[MediaRef], Sequence[float]]]:
        """(prompt, media references, scores) per entry; a pair's scores are (label, 1 − label)."""
        for e in self.entries:
            if isinstance(e, Pair):
                yield e.prompt, (e.chosen, e.rejected), (e.label, 1.0 - e.label)
            else:
                yield e.prompt, e.items, e.scores

    def fingerprint(self) -> str:
        """sha256 over prompts, media identities, labels/scores and the fit: the cache key's data part."""
        h = hashlib.sha256(f"{type(self).__name__}|{self.fit}".encode())
        for prompt, refs, scores in self._records():
            h.update(json.dumps([prompt, [self.ref_key(r) for r in refs], list(scores)]).encode())
        return h.hexdigest()

    @property
    def modality(self) -> str:
        """``"image" | "video" | "audio"`` of the first entry's first item (bytes and parquet cells are images)."""
        for _, refs, _ in self._records():
            ref = self.resolve(refs[0])
            return "image" if isinstance(ref, (bytes, ParquetRef)) else modality_of(ref)
        raise InputError(f"{self.source}: the dataset is empty")


class PairDataset(_Dataset[Pair]):
    """A list of :class:`Pair` (winner first) with media loading relative to ``root``."""

    def __init__(self, pairs: Sequence[Pair], root: Path | None = None, source: str = "<memory>",
                 resolution: FitArg = None, dropped_ties: int = 0) -> None:
        super().__init__(pairs, root, source, resolution)
        self.dropped_ties = dropped_ties

    def top_margin(self, fraction: float) -> "PairDataset":
        """The ``fraction`` of pairs with the largest :attr:`Pair.margin` (ties in margin keep file order)."""
        unknown = sum(p.margin is None for p in self.entries)
        if unknown:
            raise InputError(f"{self.source}: {unknown} of {len(self)} pairs have no 'margin' (the scorer's gap that "
                             "`mmalign pairs` writes); rebuild the data with `mmalign pairs` or drop data.top_margin")
        keep = max(1, round(fraction * len(self)))
        order = sorted(range(len(self)), key=lambda i: -self.entries[i].margin)[:keep]
        return PairDataset([self.entries[i] for i in sorted(order)], self.root, self.source, self.fit, self.dropped_ties)

    def as_rankings(self) -> "RankingDataset":
        """Each pair as a k = 2 ranking with scores (label, 1 − label): a tie gives no ranked pair."""
        rankings = [Ranking(prompt, tuple(refs), tuple(scores)) for prompt, refs, scores in self._records()]
        return RankingDataset(rankings, self.root, self.source, self.fit)


class RankingDataset(_Dataset[Ranking]):
    """A list of :class:`Ranking` (all with the same k) with media loading relative to ``root``."""

    def __init__(self, rankings: Sequence[Ranking], root: Path | None = None, source: str = "<memory>",
                 resolution: FitArg = None) -> None:
        super().__init__(rankings, root, source, resolution)
        ks = {len(r.items) for r in self.entries}
        if len(ks) > 1:
            raise InputError(f"{source}: rankings have different numbers of items {sorted(ks)}; use one k per file")
        self.k = ks.pop() if ks else 0

    def to_pairs(self, mode: str = "best-worst", ties: str = "drop") -> PairDataset:
        """Pairs from rankings: ``"best-worst"`` (one per ranking) or ``"all"`` (every ordered pair).

        Equal scores make a tie (label 0.5), dropped or kept per ``ties``.
        """
        _check_ties(ties, self.source)
        if mode not in ("best-worst", "all"):
            raise InputError(f"{self.source}: ranking-to-pairs mode must be 'best-worst' or 'all', got {mode!r}")
        pairs: list[Pair] = []
        dropped = 0
        for r in self.entries:
            order = sorted(range(len(r.items)), key=lambda i: -r.scores[i])
            if mode == "best-worst":
                candidates = [(order[0], order[-1])]
            else:
                candidates = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
            for i, j in candidates:
                tie = r.scores[i] == r.scores[j]
                if tie and ties == "drop":
                    dropped += 1
                    continue
                pairs.append(Pair(r.prompt, r.items[i], r.items[j], 0.5 if tie else 1.0, r.scores[i] - r.scores[j]))
        return PairDataset(pairs, self.root, self.source, self.fit, dropped_ties=dropped)


def _check_ties(ties: str, where: str) -> None:
    if ties not in TIES:
        raise InputError(f"{where}: ties must be one of {TIES}, got {ties!r}")


def _number(value: Any, where: str, what: str) -> float:
    """``value`` as a float; an InputError naming ``where`` and ``what`` for anything but a real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: {what} must be a number, got {value!r}")
    return float(value)


def _oriented(prompt: str, a: MediaRef, b: MediaRef, label: float, ties: str, where: str,
              margin: float | None = None) -> Pair | None:
    """Winner-first pair from (a, b, P(a ≻ b)) and a's score margin over b; None for a dropped tie."""
    if label == 1.0:
        return Pair(prompt, a, b, 1.0, margin)
    if label == 0.0:
        return Pair(prompt, b, a, 1.0, None if margin is None else -margin)
    if label == 0.5:
        return None if ties == "drop" else Pair(prompt, a, b, 0.5, margin)
    raise InputError(f"{where}: label {label!r} is not one of 1, 0, 0.5 (1 = first wins, 0.5 = tie)")


def read_pickapic(path: str | Path, ties: str = "drop", limit: int | None = None,
                  resolution: FitArg = None) -> PairDataset:
    """Read Pick-a-Pic-style parquet — a file, a folder of shards or a cached hub id ``org/name`` — into a
    :class:`PairDataset` of lazy :class:`~mmalign.data.pickapic.ParquetRef` cells (no image bytes are read here).

    Row groups are scanned in order and reading stops once ``limit`` pairs are kept."""
    _check_ties(ties, str(path))
    pairs: list[Pair] = []
    dropped = 0
    for row in scan_rows(parquet_files(path)):
        label = _number(row.label, row.where, "label_0")
        pair = _oriented(row.caption, row.first, row.second, label, ties, row.where)
        if pair is None:
            dropped += 1
        else:
            pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    return PairDataset(pairs, None, str(path), resolution, dropped_ties=dropped)


def _manifest_record(rec: Any, ties: str, where: str) -> Pair | Ranking | None:
    """One JSONL record as a :class:`Pair` (winner first; None for a dropped tie) or a :class:`Ranking`."""
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
        raise InputError(f"{where}: a record needs a 'prompt' string plus 'chosen'/'rejected', 'items'/'scores' or 'media'")
    if "items" in rec:
        items, scores = rec["items"], rec.get("scores")
        if not isinstance(items, list) or not isinstance(scores, list) or len(items) != len(scores) or len(items) < 2:
            raise InputError(f"{where}: 'items' and 'scores' must be lists of the same length ≥ 2")
        if not all(isinstance(x, str) for x in items):
            raise InputError(f"{where}: 'items' must be media file paths (strings)")
        return Ranking(rec["prompt"], tuple(items), tuple(_number(s, where, "each score") for s in scores))
    if "media" in rec:
        if not isinstance(rec["media"], str):
            raise InputError(f"{where}: 'media' must be a media file path (a string)")
        return Ranking(rec["prompt"], (rec["media"],), (1.0,))
    if "chosen" in rec and "rejected" in rec:
        if not isinstance(rec["chosen"], str) or not isinstance(rec["rejected"], str):
            raise InputError(f"{where}: 'chosen' and 'rejected' must be media file paths (strings)")
        label = _number(rec.get("label", 1.0), where, "'label'")
        margin = None if rec.get("margin") is None else _number(rec["margin"], where, "'margin'")
        return _oriented(rec["prompt"], rec["chosen"], rec["rejected"], label, ties, where, margin)
    raise InputError(f"{where}: expected keys 'chosen' and 'rejected' (a pair), 'items' and 'scores' (a ranking) "
                     "or 'media' (a sample)")


def read_manifest(path: str | Path, ties: str = "drop", limit: int | None = None,
                  resolution: FitArg = None) -> PairDataset | RankingDataset:
    """Read a JSONL manifest of pairs, rankings or samples (one kind) into a dataset; paths are relative to it.

    Samples become a :class:`RankingDataset` of k = 1 (mixed with rankings: an error naming the k's)."""
    _check_ties(ties, str(path))
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found; build one with `mmalign pairs` or write JSONL records")
    pairs: list[Pair] = []
    rankings: list[Ranking] = []
    dropped = 0
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                rec = _manifest_record(json.loads(line), ties, where)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e})") from e
            if rec is None:
                dropped += 1
            else:
                (rankings if isinstance(rec, Ranking) else pairs).append(rec)
            if pairs and rankings:
                raise InputError(f"{where}: the manifest mixes pairs with rankings or samples; write them to separate files")
            if limit is not None and len(pairs) + len(rankings) >= limit:
                break
    if not pairs and not rankings:
        raise InputError(f"{path}: the manifest holds no usable record (dropped ties: {dropped})")
    if rankings:
        return RankingDataset(rankings, path.parent, str(path), resolution)
    return PairDataset(pairs, path.parent, str(path), resolution, dropped_ties=dropped)


def _is_parquet_source(p: Path, given: str) -> bool:
    """Whether ``read_preferences(format="auto")`` reads ``p`` as Pick-a-Pic parquet."""
    if p.suffix == ".parquet" or is_hub_id(given):
        return True
    if not p.is_dir():
        return False
    if any(p.glob("*.parquet")):
        return True
    return not any((p / m).exists() for m in MANIFESTS) and any(p.rglob("*.parquet"))


def read_preferences(path: str | Path, format: str = "auto", ties: str = "drop", limit: int | None = None,
                     resolution: FitArg = None) -> PairDataset | RankingDataset:
    """Read preference data: ``format`` ``"pickapic"`` (parquet), ``"manifest"`` (JSONL) or ``"auto"``.

    ``"auto"`` picks by suffix: ``.parquet`` (or a folder of them, or one without a manifest holding them in
    subfolders, or a hub dataset id ``org/name`` that is not a path) is Pick-a-Pic; anything else a manifest; a
    folder written by ``mmalign pairs`` reads its ``pairs.jsonl`` (else ``rankings.jsonl``, else ``samples.jsonl``).
    """
    p = Path(path)
    if format == "auto":
        format = "pickapic" if _is_parquet_source(p, str(path)) else "manifest"
        if p.is_dir() and format == "manifest":
            p = next((p / f for f in MANIFESTS if (p / f).exists()), p / MANIFESTS[0])
    if format == "pickapic":
        return read_pickapic(p, ties, limit, resolution)
    if format == "manifest":
        return read_manifest(p, ties, limit, resolution)
    raise InputError(f"{path}: unknown data format {format!r}; use 'auto', 'pickapic' or 'manifest'")


__all__ = [
    "Pair", "Ranking", "PairDataset", "RankingDataset", "MediaRef", "ParquetRef", "PICKAPIC_COLUMNS", "read_pickapic",
    "read_manifest", "read_preferences", "fit_resolution", "Fit",
]
