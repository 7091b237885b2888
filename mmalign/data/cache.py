"""Latents and text conditioning of a preference dataset, encoded once into on-disk shards.

The diffusers DPO scripts run the VAE and both text encoders on every step
(``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py`` @ 58eb52c0); here each
unique media item and each unique prompt is encoded once with the adapter's ``encode_media`` /
``encode_prompts`` and stored under ``cache_dir/<sha256 key>/``:

* ``media-00000.safetensors``, … — ``latents`` of ``shard_size`` unique media items each, their
  conditioning from the media (``mcond.*``: SDXL's original size and crop, :meth:`DiffusionAdapter.media_conditioning`)
  and ``ok`` (0 where the item could not be decoded: a corrupt image row is skipped and counted, never a crash);
* ``prompts-00000.safetensors``, … — every conditioning tensor of ``shard_size`` unique prompts each
  (the last row of the last shard is the empty prompt, for prompt dropout);
* ``index.safetensors`` — ``items [M, k]``, ``prompts [M]``, ``scores [M, k]`` of the records kept;
* ``meta.json`` — written last: its presence marks a complete cache.

Each shard is written atomically as soon as it is encoded, so a killed build resumes without
re-encoding finished shards; each shard is encoded under its own fixed seed (a VAE that samples its
posterior draws the same noise whether the build ran once or was resumed). At train time the shards
are read row by row as a step needs them (:class:`FileRows`), so resident memory holds a step's rows,
not the dataset.
The key covers the data (prompts, media identities, labels, resolution), the adapter class, a
fingerprint of the encoders' weights and configs (:func:`encoder_fingerprint`) and the shard size,
so a retrained VAE or text encoder never reuses old latents. After that the trainer releases the
VAE and text encoders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mmalign.data.pairs import PairDataset, RankingDataset
from mmalign.errors import InputError
from mmalign.fileio import atomic_write, atomic_write_json
from mmalign.generators.base import DiffusionAdapter
from mmalign.media import Media
from mmalign.rng import owned_rng

log = logging.getLogger(__name__)

CACHE_VERSION = 3
#: the seed encoding runs under (the cache does not depend on a run's seed); shard i uses ENCODE_SEED + i
ENCODE_SEED = 0
#: unique media items (or prompts) per shard
SHARD_SIZE = 1024
#: how many skipped items a cache's meta.json names
MAX_LISTED_FAILURES = 50


class RowShards:
    """Rows of one tensor kept in shards of ``shard_size`` rows (the last may be shorter): tensors or
    :class:`FileRows`. Indexing with a tensor of row indices gathers those rows into one tensor, as
    ``tensor[index]`` does."""

    def __init__(self, shards: Sequence["torch.Tensor | FileRows"]) -> None:
        if not shards:
            raise InputError("RowShards needs at least one shard")
        self.shards = list(shards)
        self.shard_size = int(self.shards[0].shape[0])
        self.row_shape = tuple(self.shards[0].shape[1:])
        self.dtype = self.shards[0].dtype

    def __len__(self) -> int:
        return sum(int(s.shape[0]) for s in self.shards)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        flat = index.reshape(-1)
        shard, offset = flat // self.shard_size, flat % self.shard_size
        out = torch.empty((flat.numel(), *self.row_shape), dtype=self.dtype)
        for s in shard.unique().tolist():
            rows = shard == s
            out[rows] = self.shards[s][offset[rows]]
        return out.reshape(*index.shape, *self.row_shape)

    def materialize(self) -> torch.Tensor:
        """All rows as one in-memory tensor (small data, tests)."""
        return torch.cat([_full(s) for s in self.shards])


Rows = torch.Tensor | RowShards


@dataclass
class EncodedData:
    """An encoded dataset: ``M`` records of ``k`` items (pairs: k = 2, winner first).

    ``latents [N, ...]`` holds each unique media item once; ``items [M, k]`` indexes it.
    ``cond`` maps conditioning names to ``[P + 1, ...]`` (the last row is the empty prompt, for
    prompt dropout); ``prompts [M]`` indexes it. ``scores [M, k]``: for pairs (label, 1 − label),
    for rankings the graded scores ψ. ``latents`` and ``cond`` are tensors or :class:`RowShards`.
    """

    kind: str
    latents: Rows
    cond: dict[str, Rows]
    items: torch.Tensor
    prompts: torch.Tensor
    scores: torch.Tensor
    path: Path | None = None
    skipped: int = 0  # records dropped because one of their media items could not be decoded
    media_cond: dict[str, Rows] = field(default_factory=dict)  # per media item (DiffusionAdapter.media_conditioning)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    @property
    def empty_prompt(self) -> int:
        return next(iter(self.cond.values())).shape[0] - 1


def encoder_fingerprint(adapter: DiffusionAdapter) -> str:
    """sha256 over every encoder of ``adapter`` (:meth:`DiffusionAdapter.encoders`): class, config and weights."""
    h = hashlib.sha256()
    for name, module in sorted(adapter.encoders().items()):
        config = getattr(module, "config", None)
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        h.update(json.dumps([name, type(module).__qualname__, config], sort_keys=True, default=str).encode())
        for key, tensor in module.state_dict().items():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def cache_key(dataset: PairDataset | RankingDataset, generator_id: str, adapter: DiffusionAdapter,
              shard_size: int = SHARD_SIZE) -> str:
    """sha256 of (dataset fingerprint, generator id, adapter class, encoder fingerprint, shard size, format version)."""
    spec = {"data": dataset.fingerprint(), "generator": generator_id, "adapter": type(adapter).__qualname__,
            "encoders": encoder_fingerprint(adapter), "shard_size": shard_size, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _to_cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32 if x.is_floating_point() else x.dtype).contiguous()


# ----------------------------------------------------------------------------------------- encoding


def _encode_media_rows(dataset, adapter: DiffusionAdapter, refs: Sequence, batch_size: int, row_shape: list,
                       bar: tqdm) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``latents``, ``mcond.*`` (:meth:`DiffusionAdapter.media_conditioning`) and ``ok`` of one shard's media,
    and its ``failures`` (JSON): an item that does not decode is skipped and recorded."""
    failures: list[tuple[str, str]] = []
    loaded: list[tuple[int, Media]] = []
    for i, ref in enumerate(refs):
        try:
            loaded.append((i, dataset.load(ref)))
        except InputError as e:
            failures.append((dataset.ref_key(ref), str(e)))
    chunks = []
    for start in range(0, len(loaded), batch_size):
        batch = [m for _, m in loaded[start : start + batch_size]]
        try:
            media = type(batch[0]).cat(batch)
        except InputError as e:
            raise InputError(f"{dataset.source}: media of different sizes ({e}); set data.resolution") from e
        with torch.no_grad():
            chunks.append({"latents": _to_cpu(adapter.encode_media(media)),
                           **{f"mcond.{k}": _to_cpu(v) for k, v in adapter.media_conditioning(media).items()}})
        bar.update(len(batch))
    bar.update(len(refs) - len(loaded))
    if chunks:
        row_shape[:] = [(name, v.shape[1:], v.dtype) for name, v in chunks[0].items()]
    elif not row_shape:
        raise InputError(f"{dataset.source}: none of the first {len(refs)} media items could be decoded "
                         f"(e.g. {failures[-1][1]}); check the data")
    ok = torch.zeros(len(refs), dtype=torch.uint8)
    ok[[i for i, _ in loaded]] = 1
    out = {"ok": ok}
    for name, shape, dtype in row_shape:  # a skipped item keeps a row of zeros
        out[name] = torch.zeros((len(refs), *shape), dtype=dtype)
        if chunks:
            out[name][ok.bool()] = torch.cat([c[name] for c in chunks])
    return out, {"failures": json.dumps(failures)}


def _encode_prompt_rows(adapter: DiffusionAdapter, prompts: Sequence[str], batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        with torch.no_grad():
            cond = adapter.encode_prompts(list(prompts[start : start + batch_size]))
        for k, v in cond.items():
            parts.setdefault(k, []).append(_to_cpu(v))
    return {k: torch.cat(v) for k, v in parts.items()}, {}


Encoded = tuple[dict[str, Any], dict[str, str]]  # a shard's tensors (or FileRows) and its metadata


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


class FileRows:
    """Rows of one tensor in a safetensors file, read on demand with ``pread``: nothing of the file stays
    resident. (A memory map does not do here: a step gathers scattered rows, and each page fault maps a
    large neighbourhood of the file; at 16k pairs most of the cache was resident after 20 steps.)"""

    def __init__(self, path: str | Path, offset: int, shape: Sequence[int], dtype: torch.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = str(path), offset, torch.Size(shape), dtype
        self.row_bytes = dtype.itemsize * math.prod(self.shape[1:])
        self._fd: int | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    def _read(self, start: int, nbytes: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, nbytes, self.offset + start)
        if len(data) != nbytes:
            raise InputError(f"{self.path}: cache shard is truncated; delete its cache folder and encode again")
        return data

    def _tensor(self, data: bytes | bytearray, rows: int) -> torch.Tensor:
        if not data:
            return torch.empty((rows, *self.shape[1:]), dtype=self.dtype)
        return torch.frombuffer(bytearray(data), dtype=self.dtype).view(rows, *self.shape[1:])

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        flat = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        data = b"".join(self._read(i * self.row_bytes, self.row_bytes) for i in flat)
        return self._tensor(data, len(flat))

    def read_all(self) -> torch.Tensor:
        return self._tensor(self._read(0, self.row_bytes * len(self)), len(self))

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def read_safetensors_lazily(path: str | Path) -> tuple[dict[str, FileRows], dict[str, str]]:
    """Every tensor of a safetensors file as :class:`FileRows` (read on demand), and the file's metadata."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    meta = header.pop("__metadata__", None) or {}
    return {name: FileRows(path, 8 + n + info["data_offsets"][0], info["shape"], _DTYPES[info["dtype"]])
            for name, info in header.items()}, meta


def _full(x: torch.Tensor | FileRows) -> torch.Tensor:
    return x.read_all() if isinstance(x, FileRows) else x


def _read_shard(path: Path) -> Encoded:
    """A shard file, read on demand (:func:`read_safetensors_lazily`), with its metadata."""
    return read_safetensors_lazily(path)


def _shards(folder: Path | None, prefix: str, n: int, shard_size: int, device: torch.device | None,
            encode: Callable[[int, int], Encoded], part: tuple[int, int] = (0, 1)) -> list[Encoded]:
    """Encode rows ``[0, n)`` in shards; with ``folder``, each shard is written atomically and opened
    back (read on demand), and shards already on disk (a resumed build) are opened instead of encoded. With ``part =
    (rank, world)`` and a folder, this process encodes only shards ``i ≡ rank (mod world)`` (returning those)."""
    out = []
    for i, start in enumerate(range(0, n, shard_size)):
        path = folder / f"{prefix}-{i:05d}.safetensors" if folder is not None else None
        if path is not None and i % part[1] != part[0]:
            continue  # another process's shard
        if path is not None and path.exists():
            out.append(_read_shard(path))
            continue
        with owned_rng(ENCODE_SEED + i, device):
            tensors, meta = encode(start, min(n, start + shard_size))
        if path is not None:
            meta = {**meta, "rank": str(part[0])}  # which process encoded it
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
            tensors = _read_shard(path)[0]  # read on demand: the encoded copy is freed
        out.append((tensors, meta))
    return out


def _rows(shards: list[dict[str, Any]], name: str) -> Rows:
    parts = [s[name] for s in shards]
    return parts[0] if len(parts) == 1 and isinstance(parts[0], torch.Tensor) else RowShards(parts)


def _open(folder: Path, kind: str) -> EncodedData:
    """A complete cache folder, its shards read on demand."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    media = [_read_shard(folder / f"media-{i:05d}.safetensors")[0] for i in range(meta["media_shards"])]
    prompts = [_read_shard(folder / f"prompts-{i:05d}.safetensors")[0] for i in range(meta["prompt_shards"])]
    index = {k: v.read_all() for k, v in read_safetensors_lazily(folder / "index.safetensors")[0].items()}
    return _encoded(kind, media, prompts, index, folder, meta["skipped_records"])


def _encoded(kind: str, media: list[dict[str, torch.Tensor]], prompts: list[dict[str, torch.Tensor]],
             index: dict[str, torch.Tensor], folder: Path | None, skipped: int) -> EncodedData:
    cond = {name: _rows(prompts, name) for name in prompts[0]}
    media_cond = {name[6:]: _rows(media, name) for name in media[0] if name.startswith("mcond.")}
    return EncodedData(kind, _rows(media, "latents"), cond, index["items"], index["prompts"], index["scores"], folder,
                       skipped=skipped, media_cond=media_cond)


def encode_dataset(
    dataset: PairDataset | RankingDataset,
    adapter: DiffusionAdapter,
    generator_id: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
    shard_size: int = SHARD_SIZE,
    part: tuple[int, int] = (0, 1),
    barrier: Callable[[], None] = lambda: None,
) -> EncodedData:
    """Encode ``dataset`` with ``adapter`` once; with ``cache_dir``, open it from there if complete, resume a
    partial build, or build it (see the module docstring). Records whose media cannot be decoded are
    skipped and counted (``EncodedData.skipped``, a warning naming the first few).

    Several processes (``part = (rank, world)``, ``barrier`` = wait for all) share one build: each
    encodes its shards only, then process 0 writes the index; every process opens the whole cache.
    Without ``cache_dir`` every process encodes everything."""
    kind = "pairs" if isinstance(dataset, PairDataset) else "rankings"
    if len(dataset) == 0:
        raise InputError(f"{dataset.source}: no preference records to train on (dropped ties: "
                         f"{getattr(dataset, 'dropped_ties', 0)}); check the data or set data.ties=keep")
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / cache_key(dataset, generator_id, adapter, shard_size)
        if (folder / "meta.json").is_file():
            return _open(folder, kind)
        folder.mkdir(parents=True, exist_ok=True)

    records = list(dataset._records())
    keys: dict[str, int] = {}  # media identity -> index into latents
    refs, items = [], []
    for _, rec_refs, _ in records:
        row = []
        for r in rec_refs:
            key = dataset.ref_key(r)
            if key not in keys:
                keys[key] = len(refs)
                refs.append(r)
            row.append(keys[key])
        items.append(row)
    unique_prompts = list(dict.fromkeys(p for p, _, _ in records)) + [""]
    prompt_index = {p: i for i, p in enumerate(unique_prompts)}
    device = getattr(adapter, "device", None)

    if folder is None:
        part = (0, 1)
    prompt_shards = _shards(folder, "prompts", len(unique_prompts), shard_size, device,
                            lambda a, b: _encode_prompt_rows(adapter, unique_prompts[a:b], batch_size), part)
    row_shape: list = []
    mine = sum(min(shard_size, len(refs) - s) for i, s in enumerate(range(0, len(refs), shard_size)) if i % part[1] == part[0])
    bar = tqdm(total=mine, desc="encoding media", unit="item", disable=not progress)
    media_shards = _shards(folder, "media", len(refs), shard_size, device,
                           lambda a, b: _encode_media_rows(dataset, adapter, refs[a:b], batch_size, row_shape, bar),
                           part)
    bar.close()
    if part[1] > 1:
        log.info("process %d of %d: %d of %d media items are in its cache shards", part[0], part[1], mine, len(refs))
        barrier()  # every shard is on disk
        if part[0] != 0:
            barrier()  # process 0 writes the index
            return _open(folder, kind)
        media_shards = [_read_shard(p) for p in sorted(folder.glob("media-*.safetensors"))]

    failures = [tuple(f) for _, meta in media_shards for f in json.loads(meta.get("failures", "[]"))]
    ok = torch.cat([_full(t["ok"]) for t, _ in media_shards]).bool()
    item_t = torch.tensor(items, dtype=torch.long)
    keep = ok[item_t].all(1)
    index = {"items": item_t[keep].contiguous(),
             "prompts": torch.tensor([prompt_index[p] for p, _, _ in records], dtype=torch.long)[keep].contiguous(),
             "scores": torch.tensor([list(s) for _, _, s in records], dtype=torch.float32)[keep].contiguous()}
    skipped = int((~keep).sum())
    if skipped:
        log.warning("%s: skipped %d of %d records whose media could not be decoded (%d items), e.g. %s",
                    dataset.source, skipped, len(records), int((~ok).sum()), failures[0][1] if failures else "(see meta.json)")
    if not bool(keep.any()):
        raise InputError(f"{dataset.source}: no record has decodable media (e.g. {failures[0][1]}); check the data")
    if folder is not None:
        atomic_write(folder / "index.safetensors", lambda tmp: save_file(index, str(tmp)))
        atomic_write_json(folder / "meta.json", {
            "kind": kind, "generator": generator_id, "source": dataset.source, "version": CACHE_VERSION,
            "shard_size": shard_size, "media_items": len(refs), "prompts": len(unique_prompts),
            "records": len(records), "skipped_records": skipped, "skipped_items": int((~ok).sum()),
            "failures": [{"item": k, "error": e} for k, e in failures[:MAX_LISTED_FAILURES]],
            "media_shards": len(media_shards), "prompt_shards": -(-len(unique_prompts) // shard_size)})
        barrier()  # the other processes open the cache now
        return _open(folder, kind)
    return _encoded(kind, [t for t, _ in media_shards], [t for t, _ in prompt_shards], index, None, skipped)


__all__ = ["EncodedData", "RowShards", "encode_dataset", "cache_key", "encoder_fingerprint", "CACHE_VERSION", "SHARD_SIZE"]
