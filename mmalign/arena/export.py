"""Votes as training data: the pairs and rankings manifests of :mod:`mmalign.data.pairs`.

``mmalign arena export --format pairs`` writes ``pairs.jsonl`` (one pair per comparison a vote implies,
winner first, ``label`` 1 or 0.5 for a tie) and ``--format rankings`` writes ``rankings.jsonl`` (one
record per full-ranking vote, ``scores`` = each item's share of the other k − 1 items it beats: the
Syn-Pic ψ of :func:`mmalign.data.build.win_rates` with the voter as the one scorer; tied items score
the same). Pick-the-best votes do not order the other items, so they go to pairs only. Media paths are
absolute, so ``mmalign train`` (data.path) and ``mmalign train-scorer`` read the files unchanged,
wherever they are. Each record also carries its ``vote`` id.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from mmalign.arena.ranking import implied_pairs
from mmalign.arena.store import ArenaError, Vote
from mmalign.data.build import win_rates
from mmalign.fileio import atomic_write_json, atomic_write_jsonl

FORMATS = ("pairs", "rankings")
TIES = ("keep", "drop")


def pair_rows(votes: Iterable[Vote], ties: str = "keep") -> list[dict]:
    rows = []
    for v in votes:
        for i, j, outcome in implied_pairs(v.ranks, v.mode):
            if outcome == 0.5 and ties == "drop":
                continue
            win, lose = (i, j) if outcome >= 0.5 else (j, i)
            rows.append({"prompt": v.prompt, "chosen": v.items[win].path, "rejected": v.items[lose].path,
                         "label": 0.5 if outcome == 0.5 else 1.0, "vote": v.id})
    return rows


def ranking_rows(votes: Iterable[Vote]) -> list[dict]:
    return [{"prompt": v.prompt, "items": [it.path for it in v.items],
             "scores": win_rates(-torch.tensor([[v.ranks]], dtype=torch.float64))[0].tolist(), "vote": v.id}
            for v in votes if v.mode == "rank"]


def export_rows(votes: Iterable[Vote], format: str = "pairs", ties: str = "keep") -> list[dict]:
    """The manifest rows of ``votes`` in ``format`` (see the module docstring)."""
    if format not in FORMATS:
        raise ArenaError(f"format must be one of {FORMATS}, got {format!r}")
    if ties not in TIES:
        raise ArenaError(f"ties must be one of {TIES}, got {ties!r}")
    return pair_rows(votes, ties) if format == "pairs" else ranking_rows(votes)


def write_export(votes: Sequence[Vote], out: str | Path, format: str = "pairs", ties: str = "keep",
                 k: int | None = None) -> Path:
    """Write ``out/pairs.jsonl`` or ``out/rankings.jsonl`` (one k per rankings file: pass ``k`` when the
    votes mix several) and ``out/meta.json``; returns the manifest's path."""
    if k is not None:
        votes = [v for v in votes if len(v.items) == k]
    rows = export_rows(votes, format, ties)
    if not rows:
        raise ArenaError(f"no {format} to export from {len(votes)} vote(s)"
                         + (" (rankings come from full-ranking votes only)" if format == "rankings" else ""))
    ks = Counter(len(r["items"]) for r in rows) if format == "rankings" else Counter()
    if len(ks) > 1:
        raise ArenaError(f"the votes rank different numbers of items {dict(ks)}; export one k at a time with --k")
    out = Path(out)
    path = atomic_write_jsonl(out / f"{format}.jsonl", rows)
    atomic_write_json(out / "meta.json", {"source": "mmalign arena", "format": format, "votes": len(votes),
                                          "records": len(rows), "ties": ties,
                                          "tied_pairs": sum(1 for r in rows if r.get("label") == 0.5)})
    return path


__all__ = ["export_rows", "write_export", "FORMATS"]
