"""``combine``: one scorer from several — weights, per-prompt normalization, optional thresholds.

score = Σ_k w_k · norm(cap_k(s_k)), where

* ``cap_k(s) = min(s, τ_k)`` when a threshold τ_k is given: beyond τ_k a reward stops paying, so
  the policy cannot trade the other objectives for ever-higher values of one (the constrained /
  "proxy point" reading of reward over-optimization, Moskovitz et al. 2023, "Confronting Reward
  Model Overoptimization with Constrained RLHF");
* ``norm`` = ``per_prompt`` (z-score within the items that share a prompt, as the group-relative
  rewards of GRPO-style trainers; needs ≥ 2 items per prompt), ``batch`` (z-score over the call)
  or ``none`` (raw values; only sensible when the scales match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mmalign.errors import ConfigError, InputError
from mmalign.scoring.base import SCORER_FAMILIES, Scorer, as_media, check_prompts
from mmalign.scoring.card import ScorerCard, VideoSpec

NORMALIZATIONS = ("per_prompt", "batch", "none")


def zscore_per_prompt(scores: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """(s − mean)/std within each prompt's items (population std; a constant group gives 0)."""
    out = torch.zeros_like(scores)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    for p, idx in groups.items():
        if len(idx) < 2:
            raise InputError(f"normalize='per_prompt' needs ≥ 2 items per prompt, but prompt {p!r} has 1 item "
                             "(index {}); score groups of candidates, or use normalize='batch' or 'none'".format(idx[0]))
        out[idx] = _z(scores[idx])
    return out


def _z(x: torch.Tensor) -> torch.Tensor:
    std = x.std(unbiased=False)
    return torch.zeros_like(x) if float(std) < 1e-12 else (x - x.mean()) / std


class CombinedScorer(Scorer):
    """Weighted multi-objective scorer; ``components(...)`` returns each member's raw scores."""

    def __init__(self, scorers: dict[str, Scorer], weights: dict[str, float], normalize: str = "per_prompt",
                 thresholds: dict[str, float] | None = None, **kw):
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"combine: normalize={normalize!r}; use one of {NORMALIZATIONS}")
        if not scorers:
            raise ConfigError("combine: give at least one scorer with a weight")
        thresholds = dict(thresholds or {})
        unknown = set(thresholds) - set(scorers)
        if unknown:
            raise ConfigError(f"combine: thresholds for {sorted(unknown)}, which are not among the scorers {sorted(scorers)}")
        first = next(iter(scorers.values()))
        super().__init__(name="+".join(scorers), device=first.device, dtype=first.dtype, **kw)
        self.scorers, self.weights, self.normalize, self.thresholds = scorers, dict(weights), normalize, thresholds
        mods = [set(s.modalities) | ({"video"} if "image" in s.modalities else set()) for s in scorers.values()]
        self.modalities = tuple(m for m in ("image", "video", "audio") if all(m in ms for ms in mods))
        if not self.modalities:
            raise ConfigError(f"combine: the scorers share no modality ({[s.modalities for s in scorers.values()]})")
        self.needs_prompts = any(s.needs_prompts for s in scorers.values())

    def components(self, media, prompts=None, **kw) -> dict[str, torch.Tensor]:
        media = as_media(media)
        self.check_modality(media)
        prompts = check_prompts(prompts, len(media), media, self.needs_prompts)
        return {n: s.score(media, prompts, **kw) for n, s in self.scorers.items()}

    def score(self, media, prompts=None, **kw) -> torch.Tensor:
        media = as_media(media)
        prompts = check_prompts(prompts, len(media), media, self.needs_prompts)
        total = None
        for name, s in self.components(media, prompts, **kw).items():
            s = s.float().to(self.device)
            if name in self.thresholds:
                s = s.clamp(max=self.thresholds[name])
            if self.normalize == "per_prompt":
                s = zscore_per_prompt(s, prompts)
            elif self.normalize == "batch":
                s = _z(s)
            term = self.weights[name] * s
            total = term if total is None else total + term
        return total


def combine(weights: dict, normalize: str = "per_prompt", thresholds: dict[str, float] | None = None,
            device: str = "auto", dtype=None, local_files_only: bool | None = None) -> CombinedScorer:
    """``combine({"hpsv2.1": 1.0, "laion-aesthetic": 0.5})`` — names are loaded with ``load_scorer``;
    :class:`Scorer` objects are used as they are (keyed by their ``name``)."""
    from mmalign.scoring import load_scorer

    if not isinstance(weights, dict) or not weights:
        raise ConfigError("combine: weights must be a non-empty dict {scorer name or Scorer: weight}")
    scorers, w = {}, {}
    for key, weight in weights.items():
        s = key if isinstance(key, Scorer) else load_scorer(key, device=device, dtype=dtype, local_files_only=local_files_only)
        if s.name in scorers:
            raise ConfigError(f"combine: two scorers are named {s.name!r}; give them distinct names")
        try:
            w[s.name] = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"combine: weight of {s.name!r} must be a number, got {weight!r}") from None
        scorers[s.name] = s
    return CombinedScorer(scorers, w, normalize, thresholds)


def _member(key: str, source: Path | None) -> str:
    """A member card file named relative to the combining card's file resolves next to it; names stay names."""
    if source is None or not str(key).endswith((".yaml", ".yml")) or Path(key).is_absolute():
        return key
    return str(source.parent / key)


@SCORER_FAMILIES.register("combine")
def build_combined(card: ScorerCard, local_files_only: bool | None = None, *, name: str, device: str = "auto", dtype=None,
                   bt_scale: float = 1.0, **video) -> CombinedScorer:
    """A shipped combination: ``architecture.config`` holds :func:`combine`'s ``weights`` (member card names, or
    card files: a relative one is found next to the combining card, as a card's own files are), ``normalize``
    and ``thresholds``. Each member scores videos as its own card says, so the combination's card has no
    ``video`` options of its own."""
    config = dict(card.architecture.config or {})
    unknown = sorted(set(config) - {"weights", "normalize", "thresholds"})
    if unknown or "weights" not in config:
        raise ConfigError(f"{card.source or card.name}: architecture.config of family 'combine' takes weights (required), "
                          f"normalize and thresholds; got {sorted(config)}")
    default = VideoSpec()
    changed = sorted(k for k, v in video.items() if v != getattr(default, k.removeprefix("video_")))
    if changed:
        raise ConfigError(f"scorer {name!r} combines {sorted(config['weights'])}: {changed} apply to each member; "
                          "set them in the member's card")
    weights = {_member(key, card.source): w for key, w in dict(config["weights"]).items()}
    scorer = combine(weights, config.get("normalize", "per_prompt"), config.get("thresholds"), device=device,
                     dtype=dtype, local_files_only=local_files_only)
    scorer.name, scorer.bt_scale, scorer.card = name, float(bt_scale), card
    return scorer
