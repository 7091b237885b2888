"""Learned preference scorers for images, videos and audio: ``load_scorer``, ``list_scorers``, ``combine``.

``load_scorer("hpsv2.1")`` reads ``scorers/hpsv2.1.yaml`` (a :class:`ScorerCard`), imports the
card's ``plugin`` module if it names one, looks its ``architecture.family`` up in
:data:`~mmalign.scoring.base.SCORER_FAMILIES` and builds the scorer once (the builder finds the
weights, see :mod:`mmalign.scoring.weights` for the lookup order and offline mode); every scorer
follows :class:`Scorer` (``score``, ``compare``, ``rank``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmalign.errors import ConfigError
from mmalign.registry import import_plugin
from mmalign.scoring.base import SCORER_FAMILIES, Scorer, ScorerBuilder
from mmalign.scoring.card import ScorerCard, list_scorer_cards, read_card
from mmalign.scoring.combine import CombinedScorer, combine

#: keyword overrides ``load_scorer`` accepts (everything else is a ConfigError naming these)
OVERRIDES = ("name", "bt_scale", "video_reduce", "video_stride", "video_captions", "video_still_weight", "generate", "point_mode", "pair_mode", "card_overrides")


def list_scorers() -> list[str]:
    """Names of the shipped scorer cards (``scorers/*.yaml``)."""
    return list_scorer_cards()


def scorer_builder(card: ScorerCard) -> ScorerBuilder:
    """The builder of ``card.architecture.family``, after importing the built-in families and the card's plugin."""
    from mmalign.scoring import clap, clip, combine, judge  # noqa: F401  (they register the built-in families)

    where = str(card.source or card.name)
    if card.plugin:
        import_plugin(card.plugin, where)
    try:
        return SCORER_FAMILIES.get(card.architecture.family)
    except ConfigError as err:
        plugin = "" if card.plugin else "; a family from another package needs 'plugin: <module>' in the card"
        raise ConfigError(f"{where}: architecture.family: {err}{plugin}") from None


def load_scorer(name_or_card_path: str | Path, device: str = "auto", dtype: Any = None,
                local_files_only: bool | None = None, **overrides: Any) -> Scorer:
    """Build the scorer of a shipped card name (``list_scorers()``) or a card file path.

    ``overrides``: ``name``, ``bt_scale``, ``video_reduce``, ``video_stride``, ``video_captions``, ``video_still_weight``; for VLM judges
    ``generate`` (any ``generate(text, images) -> str``), ``point_mode``, ``pair_mode``;
    ``card_overrides`` (``["score.bt_scale=50", ...]``) edits card keys before validation.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"load_scorer: unknown option(s) {unknown}; valid options are {list(OVERRIDES)}")
    card = read_card(name_or_card_path, tuple(overrides.pop("card_overrides", ())))
    build = scorer_builder(card)
    learned = card.score.bt_scale == "logit_scale"
    kw = dict(name=card.name, device=device, dtype=dtype, bt_scale=1.0 if learned else card.score.bt_scale,
              video_reduce=card.video.reduce, video_stride=card.video.stride, video_captions=card.video.captions,
              video_still_weight=card.video.still_weight)
    kw.update(overrides)
    scorer = build(card, local_files_only, **kw)
    if learned and "bt_scale" not in overrides:
        model = getattr(scorer, "model", None)
        scale = next((getattr(model, n) for n in ("logit_scale", "logit_scale_a") if hasattr(model, n)), None)
        if scale is None:
            raise ConfigError(f"{card.source}: score.bt_scale 'logit_scale' but the model has no logit_scale; give a number")
        scorer.bt_scale = float(scale.detach().exp())
    return scorer


__all__ = ["Scorer", "ScorerCard", "CombinedScorer", "SCORER_FAMILIES", "load_scorer", "list_scorers", "combine",
           "read_card", "scorer_builder"]
