"""The synthetic world's exact oracle as a scorer: family ``synth_oracle``, card ``scorers/synth-oracle.yaml``.

The card names this module as its ``plugin``, so ``load_scorer("synth-oracle")`` works after a plain
``import mmalign``; the generic scoring layer never imports the synthetic world itself.

``score`` = the oracle's faithfulness of each item (the fraction of its prompt's skills that pass,
:func:`mmalign.synth.oracle.evaluate`) in [0, 1], higher is better; images, videos (checked as
videos, not frame by frame) and audio; no weights and no gradient. ``compare`` is the card's
Bradley-Terry formula on those scores. :meth:`OracleScorer.item_details` gives each item's skill
checks (and ``details`` the batch's per-skill accuracies) through the
:class:`~mmalign.scoring.base.Scorer` interface, so an evaluation logs ``oracle/<skill>`` without
importing the synthetic world::

    oracle = load_scorer("synth-oracle")
    metrics = {"oracle": float(oracle.score(media, prompts).mean()),
               **{f"oracle/{k}": v for k, v in oracle.details(media, prompts).items()}}
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmalign.errors import InputError
from mmalign.scoring.base import SCORER_FAMILIES, Media, Scorer, as_media, check_prompts
from mmalign.scoring.card import ScorerCard
from mmalign.synth.oracle import evaluate


class OracleScorer(Scorer):
    """Faithfulness of synthetic-world media to their prompts, checked exactly (see the module docstring)."""

    modalities = ("image", "video", "audio")
    native_video = True

    def _score_batch(self, media: Media, prompts: list[str]) -> torch.Tensor:
        return evaluate(media, prompts).faithfulness.to(self.device)

    def score(self, media, prompts=None, *, differentiable: bool = False, **kw) -> torch.Tensor:
        if differentiable:
            raise InputError(f"scorer {self.name!r} is an exact oracle (segmentation, pitch tracking) and has no gradient; "
                             "use a learned scorer such as synth-hps for reward gradients")
        return super().score(media, prompts, **kw)

    def item_details(self, media: Media | torch.Tensor, prompts: str | Sequence[str] | None = None) -> list[dict[str, float]]:
        """Each item's skill checks (1.0 = pass), for the skills its prompt tests; :meth:`details` averages them."""
        media = as_media(media)
        self.check_modality(media)
        result = evaluate(media, check_prompts(prompts, len(media), media))
        return [{k: float(v) for k, v in checks.items()} for checks in result.skills]


@SCORER_FAMILIES.register("synth_oracle")
def build_synth_oracle(card: ScorerCard, local_files_only: bool | None = None, **kw) -> OracleScorer:
    """The oracle needs no weights: ``checkpoint: {source: none}`` in its card."""
    return OracleScorer(card=card, **kw)
