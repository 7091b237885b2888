"""Learned preference scorers for images, videos and audio: ``load_scorer``, ``list_scorers``, ``combine``.

``load_scorer("hpsv2.1")`` reads ``scorers/hpsv2.1.yaml`` (a :class:`ScorerCard`), finds the
weights (see :mod:`mmalign.scoring.weights` for the lookup order and offline mode) and builds the
scorer once; every scorer follows :class:`Scorer` (``score``, ``compare``, ``rank``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmalign.errors import ConfigError
from mmalign.scoring.base import Scorer
from mmalign.scoring.card import ScorerCard, list_scorer_cards, read_card
from mmalign.scoring.combine import CombinedScorer, combine

#: keyword overrides ``load_scorer`` accepts (everything else is a ConfigError naming these)
OVERRIDES = ("name", "bt_scale", "video_reduce", "video_stride", "generate", "point_mode", "pair_mode", "card_overrides")


def list_scorers() -> list[str]:
    """Names of the shipped scorer cards (``scorers/*.yaml``)."""
    return list_scorer_cards()


def _build(card: ScorerCard, path: Any, local_files_only: bool | None, kw: dict) -> Scorer:
    family = card.architecture.family
    if family == "open_clip":
        from mmalign.scoring.clip import build_open_clip

        return build_open_clip(card, path, local_files_only, **kw)
    if family == "hf_clip":
        from mmalign.scoring.clip import build_hf_clip

        return build_hf_clip(card, path, local_files_only, **kw)
    if family == "hf_clap":
        from mmalign.scoring.clap import build_hf_clap

        return build_hf_clap(card, path, local_files_only, **kw)
    from mmalign.scoring.judge import JudgeScorer, load_qwen_vl

    generate = kw.pop("generate", None)
    modes = {k: kw.pop(k) for k in ("point_mode", "pair_mode") if k in kw}
    j = card.judge
    if generate is None:
        from mmalign.scoring.base import resolve_device, resolve_dtype
        from mmalign.scoring.weights import is_offline

        dev = resolve_device(kw.get("device", "auto"))
        generate = load_qwen_vl(str(path), dev, resolve_dtype(kw.get("dtype"), dev), j.max_new_tokens if j else 512,
                                local_files_only=True if path is not None else is_offline(local_files_only))
    opts = {} if j is None else dict(point_template=j.point_template, pair_template=j.pair_template,
                                      image_size=j.image_size, max_frames=j.max_frames)
    return JudgeScorer(generate, **opts, **modes, card=card, **kw)


def load_scorer(name_or_card_path: str | Path, device: str = "auto", dtype: Any = None,
                local_files_only: bool | None = None, **overrides: Any) -> Scorer:
    """Build the scorer of a shipped card name (``list_scorers()``) or a card file path.

    ``overrides``: ``name``, ``bt_scale``, ``video_reduce``, ``video_stride``; for VLM judges
    ``generate`` (any ``generate(text, images) -> str``), ``point_mode``, ``pair_mode``;
    ``card_overrides`` (``["score.bt_scale=50", ...]``) edits card keys before validation.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"load_scorer: unknown option(s) {unknown}; valid options are {list(OVERRIDES)}")
    card = read_card(name_or_card_path, tuple(overrides.pop("card_overrides", ())))
    from mmalign.scoring.weights import resolve_checkpoint

    needs_weights = not (card.architecture.family == "vlm_judge" and "generate" in overrides)
    path = resolve_checkpoint(card.name, card.checkpoint, local_files_only) if needs_weights else None
    learned = card.score.bt_scale == "logit_scale"
    kw = dict(name=card.name, device=device, dtype=dtype, bt_scale=1.0 if learned else card.score.bt_scale,
              video_reduce=card.video.reduce, video_stride=card.video.stride)
    kw.update(overrides)
    scorer = _build(card, path, local_files_only, kw)
    if learned and "bt_scale" not in overrides:
        scale = next((getattr(scorer.model, n) for n in ("logit_scale", "logit_scale_a") if hasattr(scorer.model, n)), None)
        if scale is None:
            raise ConfigError(f"{card.source}: score.bt_scale 'logit_scale' but the model has no logit_scale; give a number")
        scorer.bt_scale = float(scale.detach().exp())
    return scorer


__all__ = ["Scorer", "ScorerCard", "CombinedScorer", "load_scorer", "list_scorers", "combine", "read_card"]
