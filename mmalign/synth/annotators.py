"""Simulated annotators: human-like preference data whose truth is known.

Each annotator has a hidden utility ``u = w_f · faithfulness + w_q · quality + ε`` (oracle
faithfulness and quality, ``ε ~ N(0, noise²)`` drawn per judgment) and chooses between two items
with the Bradley-Terry model ``P(a ≻ b) = σ((u_a − u_b) / temperature)``; when ``|u_a − u_b|`` is
below ``tie_margin`` it reports a tie (label 0.5), as Pick-a-Pic raters may. K-wise rankings sort
the noisy utilities. Two annotators with different seeds disagree as people do, which gives the
agreement ceiling a learned scorer is compared with (HPSv2 reports 83.3% vs a single human's 78.1%).

They are a preference source like any user's data: :func:`write_pickapic_parquet` writes their
choices as Pick-a-Pic parquet (``jpg_0, jpg_1, label_0, label_1, caption``), which
:func:`mmalign.data.pairs.read_pickapic` reads for training.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmalign.errors import InputError
from mmalign.fileio import atomic_write
from mmalign.media import ImageBatch, Media
from mmalign.synth.oracle import evaluate, image_quality


@dataclass
class Annotator:
    """A simulated rater. Same seed ⇒ same choices on the same inputs."""

    seed: int = 0
    noise: float = 0.15
    temperature: float = 0.1
    tie_margin: float = 0.02
    w_faithfulness: float = 1.0
    w_quality: float = 0.5

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def true_utility(self, media: Media, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """The noise-free utility (what an infinite panel of such raters would agree on)."""
        r = evaluate(media, prompts)
        return self.w_faithfulness * r.faithfulness + self.w_quality * r.quality

    def utility(self, media: Media, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """One noisy judgment of each item's utility."""
        return self._noisy(self.true_utility(media, prompts))

    def rate_quality(self, images: ImageBatch) -> torch.Tensor:
        """One noisy rating of each image's quality alone, with no prompt (the oracle's palette noise and
        edge sharpness, :func:`~mmalign.synth.oracle.image_quality`): the task of an image-quality study,
        whose raters' mean is a mean opinion score (SPAQ, KonIQ-10k)."""
        data = images.pixels.detach().float().clamp(0, 1).cpu().numpy()
        return self._noisy(torch.tensor([image_quality(x)["quality"] for x in data]))

    def _noisy(self, u: torch.Tensor) -> torch.Tensor:
        return u + torch.from_numpy(self._rng.normal(0.0, self.noise, len(u))).float()

    def choose_from_utilities(self, ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """Labels for pairs with noisy utilities ``ua``, ``ub``: 1.0 (a wins), 0.0 (b wins) or 0.5 (tie)."""
        return self._choose((ua - ub).numpy())

    def _choose(self, d: np.ndarray) -> torch.Tensor:
        p = 1.0 / (1.0 + np.exp(-d / self.temperature))
        wins = (self._rng.random(len(d)) < p).astype(np.float32)
        wins[np.abs(d) < self.tie_margin] = 0.5
        return torch.from_numpy(wins)

    def choose(self, a: Media, b: Media, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Pairwise choices between items ``a[i]`` and ``b[i]`` for the same prompt."""
        if len(a) != len(b):
            raise InputError(f"annotator: {len(a)} items in a but {len(b)} in b; pairs need equal lengths")
        prompts = list(prompts) if prompts is not None else (a.prompts or b.prompts)
        return self.judge(self.true_utility(a, prompts), self.true_utility(b, prompts))

    def judge(self, true_a: torch.Tensor, true_b: torch.Tensor) -> torch.Tensor:
        """Choices between items of true utilities ``true_a[i]`` and ``true_b[i]``.

        One noise draw per judgment, on the difference (``√2·noise``: the spread of two independent
        perceptions), so two items the rater cannot tell apart — identical media, equal true utility —
        are always a tie, and a model compared with itself wins exactly half.
        """
        d = (true_a - true_b).double().numpy()
        same = d == 0
        labels = self._choose(d + self._rng.normal(0.0, self.noise * np.sqrt(2.0), len(d)))
        labels[torch.from_numpy(same)] = 0.5
        return labels

    def rank(self, group: Media, prompt: str) -> list[int]:
        """A k-wise ranking (best first) of the items of ``group``, all made for ``prompt``."""
        u = self.utility(group, [prompt] * len(group))
        return [int(i) for i in torch.argsort(u, descending=True, stable=True)]


def panel_votes(a: Media, b: Media, prompts: Sequence[str], annotators: int, seed: int = 0) -> np.ndarray:
    """Votes ``[annotators, n]`` (1 = a wins, 0.5 tie, 0 = b wins) of a panel of independent raters.

    The oracle runs once per item; each rater (seed ``seed + 100 + j``) then judges every pair with
    its own noise, exactly as :meth:`Annotator.choose` would.
    """
    if len(a) != len(b) or len(a) != len(prompts):
        raise InputError(f"panel_votes: {len(a)} items in a, {len(b)} in b, {len(prompts)} prompts; all must match")
    ua, ub = Annotator().true_utility(a, prompts), Annotator().true_utility(b, prompts)
    return np.stack([Annotator(seed=seed + 100 + j).judge(ua, ub).numpy() for j in range(annotators)])


def agreement(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float:
    """Pooled agreement of two label vectors over pairs where neither is a tie."""
    keep = (labels_a != 0.5) & (labels_b != 0.5)
    if not keep.any():
        return float("nan")
    return float((labels_a[keep] == labels_b[keep]).float().mean())


# ---------------------------------------------------------------------------------------------
# writers


def _png_bytes(pixels: torch.Tensor) -> bytes:
    from PIL import Image

    arr = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_pickapic_parquet(path: str | os.PathLike, a: ImageBatch, b: ImageBatch, prompts: Sequence[str], labels: torch.Tensor) -> Path:
    """Write image pairs as a Pick-a-Pic-v2-style parquet file (``label_0`` = 1 if ``jpg_0`` wins, 0.5 tie)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (len(a) == len(b) == len(prompts) == len(labels)):
        raise InputError("write_pickapic_parquet: a, b, prompts and labels must have the same length")
    table = pa.table(
        {
            "caption": list(prompts),
            "jpg_0": [_png_bytes(x) for x in a.pixels],
            "jpg_1": [_png_bytes(x) for x in b.pixels],
            "label_0": [float(v) for v in labels],
            "label_1": [1.0 - float(v) for v in labels],
        }
    )
    return atomic_write(path, lambda tmp: pq.write_table(table, str(tmp)))
