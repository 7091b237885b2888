"""Latents and text conditioning of a preference dataset, encoded once and stored on disk.

The diffusers DPO scripts run the VAE and both text encoders on every step
(``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py`` @ 58eb52c0); here each
unique media file and each unique prompt is encoded once with the adapter's ``encode_media`` /
``encode_prompts``, stored as one safetensors file under ``cache_dir/<sha256 key>.safetensors`` and
reused by later runs. The key covers the data (prompts, media identities, labels, resolution), the
adapter class and a fingerprint of the encoders' weights and configs
(:func:`encoder_fingerprint`), so a retrained VAE or text encoder never reuses old latents. After
that the trainer can release the VAE and text encoders. The latents are whatever ``encode_media``
returns, fixed once: encoding runs under a fixed seed (a VAE that samples its posterior is sampled
once, the same way every time), and a run gets the same tensors (values and memory layout) whether
it built the cache or read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mmalign.data.pairs import PairDataset, RankingDataset
from mmalign.errors import InputError
from mmalign.fileio import atomic_write
from mmalign.generators.base import DiffusionAdapter
from mmalign.media import Media
from mmalign.rng import owned_rng

CACHE_VERSION = 2
#: the seed encoding runs under (the cache does not depend on a run's seed)
ENCODE_SEED = 0


@dataclass
class EncodedData:
    """An encoded dataset: ``M`` records of ``k`` items (pairs: k = 2, winner first).

    ``latents [N, ...]`` holds each unique media item once; ``items [M, k]`` indexes it.
    ``cond`` maps conditioning names to ``[P + 1, ...]`` (the last row is the empty prompt, for
    prompt dropout); ``prompts [M]`` indexes it. ``scores [M, k]``: for pairs (label, 1 − label),
    for rankings the graded scores ψ.
    """

    kind: str
    latents: torch.Tensor
    cond: dict[str, torch.Tensor]
    items: torch.Tensor
    prompts: torch.Tensor
    scores: torch.Tensor
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    @property
    def empty_prompt(self) -> int:
        return next(iter(self.cond.values())).shape[0] - 1

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"latents": self.latents, "items": self.items, "prompts": self.prompts, "scores": self.scores}
        out.update({f"cond.{k}": v for k, v in self.cond.items()})
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], kind: str, path: Path | None = None) -> "EncodedData":
        cond = {k[5:]: v for k, v in tensors.items() if k.startswith("cond.")}
        return cls(kind, tensors["latents"], cond, tensors["items"], tensors["prompts"], tensors["scores"], path)


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


def cache_key(dataset: PairDataset | RankingDataset, generator_id: str, adapter: DiffusionAdapter) -> str:
    """sha256 of (dataset fingerprint, generator id, adapter class, encoder fingerprint, cache format version)."""
    spec = {"data": dataset.fingerprint(), "generator": generator_id, "adapter": type(adapter).__qualname__,
            "encoders": encoder_fingerprint(adapter), "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _to_cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32 if x.is_floating_point() else x.dtype).contiguous()


def _encode_media(dataset, adapter: DiffusionAdapter, refs: Sequence, batch_size: int, progress: bool) -> torch.Tensor:
    chunks = []
    bar = tqdm(total=len(refs), desc="encoding media", unit="item", disable=not progress)
    for start in range(0, len(refs), batch_size):
        batch: list[Media] = [dataset.load(r) for r in refs[start : start + batch_size]]
        try:
            media = type(batch[0]).cat(batch)
        except InputError as e:
            raise InputError(f"{dataset.source}: media of different sizes ({e}); set data.resolution") from e
        with torch.no_grad():
            chunks.append(_to_cpu(adapter.encode_media(media)))
        bar.update(len(batch))
    bar.close()
    return torch.cat(chunks)


def _encode_prompts(adapter: DiffusionAdapter, prompts: Sequence[str], batch_size: int) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        with torch.no_grad():
            cond = adapter.encode_prompts(list(prompts[start : start + batch_size]))
        for k, v in cond.items():
            parts.setdefault(k, []).append(_to_cpu(v))
    return {k: torch.cat(v) for k, v in parts.items()}


def encode_dataset(
    dataset: PairDataset | RankingDataset,
    adapter: DiffusionAdapter,
    generator_id: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> EncodedData:
    """Encode ``dataset`` with ``adapter`` once; with ``cache_dir``, load it from there if present, else store it."""
    kind = "pairs" if isinstance(dataset, PairDataset) else "rankings"
    if len(dataset) == 0:
        raise InputError(f"{dataset.source}: no preference records to train on (dropped ties: "
                         f"{getattr(dataset, 'dropped_ties', 0)}); check the data or set data.ties=keep")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(dataset, generator_id, adapter)}.safetensors"
        if path.exists():
            return EncodedData.from_tensors(load_file(str(path)), kind, path)

    records = list(dataset._records())
    keys = {}  # media identity -> index into latents
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
    unique_prompts = list(dict.fromkeys(p for p, _, _ in records))
    prompt_index = {p: i for i, p in enumerate(unique_prompts)}

    with owned_rng(ENCODE_SEED, getattr(adapter, "device", None)):
        latents = _encode_media(dataset, adapter, refs, batch_size, progress)
        cond = _encode_prompts(adapter, unique_prompts + [""], batch_size)
    data = EncodedData(
        kind,
        latents,
        cond,
        torch.tensor(items, dtype=torch.long),
        torch.tensor([prompt_index[p] for p, _, _ in records], dtype=torch.long),
        torch.tensor([list(s) for _, _, s in records], dtype=torch.float32),
        path,
    )
    if path is not None:
        meta = {"kind": kind, "generator": generator_id, "source": dataset.source, "version": str(CACHE_VERSION)}
        atomic_write(path, lambda tmp: save_file(data.to_tensors(), str(tmp), metadata=meta))
    return data


__all__ = ["EncodedData", "encode_dataset", "cache_key", "encoder_fingerprint", "CACHE_VERSION"]
