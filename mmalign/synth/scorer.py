"""The synthetic world's exact oracle as a scorer (family ``synth_oracle``, card ``scorers/synth-oracle.yaml``)
and a panel of its simulated raters (family ``synth_raters``, card ``scorers/synth-raters.yaml``).

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

import hashlib
from typing import Sequence

import numpy as np
import torch

from mmalign.errors import InputError
from mmalign.scoring.base import SCORER_FAMILIES, Media, Scorer, as_media, check_prompts
from mmalign.scoring.card import ScorerCard
from mmalign.synth.annotators import Annotator
from mmalign.synth.oracle import evaluate


class _OracleBased(Scorer):
    """A scorer computed by the exact oracle: every modality, videos as videos, no gradient."""

    modalities = ("image", "video", "audio")
    native_video = True

    def score(self, media, prompts=None, *, differentiable: bool = False, **kw) -> torch.Tensor:
        if differentiable:
            raise InputError(f"scorer {self.name!r} is computed by the exact oracle (segmentation, pitch tracking) and has "
                             "no gradient; use a learned scorer such as synth-hps for reward gradients")
        return super().score(media, prompts, **kw)


class OracleScorer(_OracleBased):
    """Faithfulness of synthetic-world media to their prompts, checked exactly (see the module docstring)."""

    def _score_batch(self, media: Media, prompts: list[str]) -> torch.Tensor:
        return evaluate(media, prompts).faithfulness.to(self.device)

    def item_details(self, media: Media | torch.Tensor, prompts: str | Sequence[str] | None = None) -> list[dict[str, float]]:
        """Each item's skill checks (1.0 = pass), for the skills its prompt tests; :meth:`details` averages them."""
        media = as_media(media)
        self.check_modality(media)
        result = evaluate(media, check_prompts(prompts, len(media), media))
        return [{k: float(v) for k, v in checks.items()} for checks in result.skills]


class RaterPanelScorer(_OracleBased):
    """A panel of simulated raters (:class:`~mmalign.synth.annotators.Annotator`) rating each item.

    Each rater perceives the item's utility ``w_f · faithfulness + w_q · quality`` with its own noise;
    the score is the panel's mean rating, as a mean opinion score of human ratings is (Pick-a-Pic and
    HPD v2 collect such labels on the model's own samples). A rating depends only on the item (its
    pixels or samples, quantised to the bytes a file stores), its prompt and the panel's ``seed``, so
    the same item always gets the same score. The raters are seeds ``seed … seed + raters − 1``; the
    demo's evaluation panel (seeds 100 + demo seed and up) is another set of people.
    """

    def __init__(self, *, raters: int = 5, seed: int = 0, **kw) -> None:
        if raters < 1:
            raise InputError(f"synth-raters: raters = {raters}; a panel needs at least one rater")
        super().__init__(**kw)
        self.raters, self.seed, self.annotator = int(raters), int(seed), Annotator()

    def _score_batch(self, media: Media, prompts: list[str]) -> torch.Tensor:
        utility = self.annotator.true_utility(media, prompts).double()
        noise = [self._noise(media, i, p) for i, p in enumerate(prompts)]
        return (utility + torch.tensor(noise, dtype=torch.float64)).float().to(self.device)

    def _noise(self, media: Media, i: int, prompt: str) -> float:
        """The mean of the raters' noise for item ``i``: seeded by its stored bytes, its prompt and the panel."""
        x = media.samples[i] if media.modality == "audio" else media.pixels[i]
        stored = (x.clamp(-1, 1) * 32767).round().short() if media.modality == "audio" else (x.clamp(0, 1) * 255).round().byte()
        digest = hashlib.blake2b(stored.cpu().numpy().tobytes() + prompt.encode(), digest_size=8,
                                 key=str(self.seed).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return float(rng.normal(0.0, self.annotator.noise, self.raters).mean())


@SCORER_FAMILIES.register("synth_raters")
def build_synth_raters(card: ScorerCard, local_files_only: bool | None = None, **kw) -> RaterPanelScorer:
    """No weights: ``architecture.config`` holds the panel (``raters``, ``seed``)."""
    return RaterPanelScorer(card=card, **(card.architecture.config or {}), **kw)


@SCORER_FAMILIES.register("synth_oracle")
def build_synth_oracle(card: ScorerCard, local_files_only: bool | None = None, **kw) -> OracleScorer:
    """The oracle needs no weights: ``checkpoint: {source: none}`` in its card."""
    return OracleScorer(card=card, **kw)
