"""Build preference data from a generator and scorers: sample k per prompt, score, write pairs and rankings.

Outputs (a folder): ``media/`` (one file per sample), ``rankings.jsonl`` (every prompt's k items with
their win rates ψ as ``scores``, and each scorer's raw scores under ``raw``), ``pairs.jsonl`` (at most
one pair per prompt) and ``meta.json``; both manifests follow the schemas of :mod:`mmalign.data.pairs`
and are read by :func:`mmalign.data.pairs.read_preferences`.

* **Rankings** — RankDPO's Syn-Pic (Karthik et al. 2024, "Scalable Ranked Preference Optimization for
  Text-to-Image Generation", Algorithm 1): for each scorer v and ordered pair (i, j), i gets a point
  if R_v(x_i) > R_v(x_j); ψ_i = C_i / (n·(k − 1)), a win rate over all scorers and opponents (raw
  scores are never averaged across scorers).
* **Pairs**, ``mode="best-worst"``: highest-ψ vs lowest-ψ item; equal ψ is a tie (label 0.5).
* **Pairs**, ``mode="unifiedreward"``: UnifiedReward's DPO data sifting (Wang et al. 2025, "Unified
  Reward Model for Multimodal Understanding and Generation", preference data construction): pair
  ranking of items (2j, 2j+1) with ``compare`` (mean P(a ≻ b) over scorers; an exact 0.5 is a tie
  and the pair is skipped instead of defaulting to the first image), then point sifting: the best
  chosen item vs the worst rejected item by ψ (= the pointwise score order for one scorer), kept
  only if the chosen one scores strictly higher (numerically, not as strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mmalign.devices import dtype_name, process_state
from mmalign.errors import InputError
from mmalign.fileio import atomic_write_json, atomic_write_jsonl
from mmalign.media import save_media

MODES = ("best-worst", "unifiedreward")


@dataclass
class BuildResult:
    out: Path
    pairs: Path
    rankings: Path
    n_prompts: int
    n_pairs: int
    n_ties: int


def win_rates(scores: torch.Tensor) -> torch.Tensor:
    """Syn-Pic ψ from per-scorer scores ``[n, P, k]`` → ``[P, k]`` in [0, 1] (Algorithm 1)."""
    if scores.ndim != 3 or scores.shape[-1] < 2:
        raise InputError(f"win_rates: expected scores [n_scorers, prompts, k ≥ 2], got {tuple(scores.shape)}")
    n, _, k = scores.shape
    wins = (scores.unsqueeze(-1) > scores.unsqueeze(-2)).sum(-1)  # [n, P, k]: opponents beaten
    return wins.sum(0).float() / (n * (k - 1))


def best_worst(psi: torch.Tensor) -> list[tuple[int, int, float]]:
    """Per prompt: (best index, worst index, label); equal ψ gives label 0.5."""
    out = []
    for row in psi:
        order = torch.argsort(row, descending=True, stable=True).tolist()
        i, j = order[0], order[-1]
        out.append((i, j, 0.5 if row[i] == row[j] else 1.0))
    return out


def unifiedreward_sift(psi: torch.Tensor, pair_prob: torch.Tensor) -> list[tuple[int, int, float] | None]:
    """Pair ranking + point sifting per prompt. ``pair_prob [P, k//2]`` = P(item 2j ≻ item 2j+1)."""
    out: list[tuple[int, int, float] | None] = []
    for row, probs in zip(psi, pair_prob):
        chosen, rejected = [], []
        for j, p in enumerate(probs.tolist()):
            if p == 0.5:
                continue  # a tie: neither chosen nor rejected
            win, lose = (2 * j, 2 * j + 1) if p > 0.5 else (2 * j + 1, 2 * j)
            chosen.append(win)
            rejected.append(lose)
        if not chosen:
            out.append(None)
            continue
        best = max(chosen, key=lambda i: row[i].item())
        worst = min(rejected, key=lambda i: row[i].item())
        out.append((best, worst, 1.0) if row[best] > row[worst] else None)
    return out


def build_preferences(generator: Any, scorers: Sequence[Any], prompts: Sequence[str], out: str | Path, k: int = 4,
                      seed: int = 0, mode: str = "best-worst", batch_size: int = 8, progress: bool = True,
                      sample_kwargs: dict[str, Any] | None = None) -> BuildResult:
    """Sample ``k`` per prompt with ``generator``, score with every scorer, write media + manifests to ``out``.

    Under ``accelerate launch`` (or ``torchrun``) each process samples, scores and saves a contiguous
    share of the prompts with the noise those items have in a one-process run (``first_prompt``); the
    scores are gathered in input order and the main process writes the manifests, so N processes
    write what one would.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 2 or (mode == "unifiedreward" and k % 2):
        raise InputError(f"k = {k}: need k ≥ 2 (and even for mode=unifiedreward, which pairs items 2j, 2j+1)")
    if not scorers:
        raise InputError("give at least one scorer")
    prompts = list(prompts)
    out = Path(out)
    state = process_state()
    with state.split_between_processes(list(range(len(prompts)))) as mine:  # contiguous, in order
        rows = _sample_and_score(generator, scorers, prompts, mine, out, k, seed, mode, batch_size,
                                 progress and state.is_main_process, sample_kwargs or {})
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)  # rank order = input order
    rel = [r for row in rows for r in row["items"]]
    raw = torch.tensor([row["raw"] for row in rows]).permute(1, 0, 2)  # [n_scorers, P, k]
    psi = win_rates(raw)
    scorer_names = [getattr(s, "name", type(s).__name__) for s in scorers]

    rankings = [{"prompt": p, "items": rel[i * k : (i + 1) * k], "scores": psi[i].tolist(),
                 "raw": {n: raw[v, i].tolist() for v, n in enumerate(scorer_names)}} for i, p in enumerate(prompts)]
    if mode == "best-worst":
        picks: list = best_worst(psi)
    else:
        picks = unifiedreward_sift(psi, torch.tensor([row["pair_prob"] for row in rows]))
    # margin: the raw score gap chosen − rejected, averaged over the scorers (data.top_margin selects by it)
    pairs = [{"prompt": p, "chosen": rel[i * k + pick[0]], "rejected": rel[i * k + pick[1]], "label": pick[2],
              "margin": float((raw[:, i, pick[0]] - raw[:, i, pick[1]]).mean())}
             for i, (p, pick) in enumerate(zip(prompts, picks)) if pick is not None]
    meta = {"generator": getattr(generator, "name", None) or type(generator).__name__, "scorers": scorer_names,
            "k": k, "seed": seed, "mode": mode, "prompts": len(prompts), "pairs": len(pairs),
            "ties": sum(1 for p in pairs if p["label"] == 0.5), "processes": state.num_processes,
            "dtype": dtype_name(getattr(generator, "dtype", torch.float32))}
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(out / "rankings.jsonl", rankings)
        atomic_write_jsonl(out / "pairs.jsonl", pairs)
        atomic_write_json(out / "meta.json", meta)
    state.wait_for_everyone()
    return BuildResult(out, out / "pairs.jsonl", out / "rankings.jsonl", len(prompts), len(pairs), meta["ties"])


def _sample_and_score(generator: Any, scorers: Sequence[Any], prompts: list[str], mine: list[int], out: Path, k: int,
                      seed: int, mode: str, batch_size: int, progress: bool,
                      sample_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """This process's prompts ``mine`` (contiguous indices): sample, score, save; one row per prompt
    with its media paths (relative to ``out``), raw scores ``[n_scorers][k]`` and, for UnifiedReward
    sifting, ``pair_prob`` = mean over scorers of P(item 2j ≻ item 2j+1)."""
    if not mine:
        return []
    part = [prompts[i] for i in mine]
    media = generator.sample(part, n=k, seed=seed, batch_size=batch_size, progress=progress, first_prompt=mine[0],
                             **sample_kwargs)
    flat_prompts = [p for p in part for _ in range(k)]
    raw = torch.stack([s.score(media, flat_prompts).float().cpu().view(len(part), k) for s in scorers])
    names = [f"{i:05d}_{j}" for i in mine for j in range(k)]
    rel = [str(p.relative_to(out)) for p in save_media(media, out / "media", names=names)]
    probs = None
    if mode == "unifiedreward":
        a_idx = list(range(0, len(media), 2))
        probs = torch.stack([s.compare(media[a_idx], media[[i + 1 for i in a_idx]], [flat_prompts[i] for i in a_idx])
                             .float().cpu() for s in scorers]).mean(0).view(len(part), k // 2)
    return [{"items": rel[r * k : (r + 1) * k], "raw": raw[:, r].tolist(),
             "pair_prob": None if probs is None else probs[r].tolist()} for r in range(len(part))]


__all__ = ["build_preferences", "win_rates", "best_worst", "unifiedreward_sift", "BuildResult", "MODES"]
