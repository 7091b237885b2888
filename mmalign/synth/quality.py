"""synth-iqa: a learned imaging-quality model of the synthetic world (family ``synth_iqa``).

The synthetic world's analogue of the no-reference image-quality models that VBench's "imaging quality"
dimension (MUSIQ, Ke et al. 2021, trained on SPAQ's mean opinion scores) and the LAION aesthetic
predictor stand for: a small convolutional network that regresses a picture's **mean opinion score**
(MOS) of quality, without a prompt. Its labels are ratings of simulated people
(:meth:`mmalign.synth.annotators.Annotator.rate_quality`: each perceives the oracle's image quality,
palette noise and edge sharpness, with its own noise), averaged over a panel, as SPAQ and KonIQ average
their raters; it never sees the oracle's formula. Trained by ``python -m mmalign.zoo.train_quality``
on synth-video frames, synth-sdxl samples and clean, noisy and blurred renders.

Videos score frame by frame (the card's ``video`` block: mean over frames, as VBench averages
MUSIQ over frames). The score is differentiable, so reward backpropagation can ascend it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mmalign.scoring.base import SCORER_FAMILIES, Media, Scorer
from mmalign.scoring.card import ScorerCard
from mmalign.scoring.weights import resolve_checkpoint


class QualityNet(ModelMixin, ConfigMixin):
    """Pixels ``[B, 3, size, size]`` in [0, 1] → predicted MOS ``[B]``: two full-resolution 3×3 convolutions
    (edges and palette purity are local), two strided ones, global average pooling and a linear read-out."""

    @register_to_config
    def __init__(self, size: int = 32, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Linear(2 * width, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.body(pixels).mean(dim=(2, 3))).squeeze(1)


class QualityScorer(Scorer):
    """MOS of each image (videos: per frame, then the card's reduction); prompts are not used."""

    needs_prompts = False

    def __init__(self, model: QualityNet, **kw) -> None:
        self.model = model.eval().requires_grad_(False)
        super().__init__(**kw)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def _score_batch(self, media: Media, prompts: list[str]) -> torch.Tensor:
        return self.model(media.pixels.to(self.device, self.dtype))


@SCORER_FAMILIES.register("synth_iqa")
def build_synth_iqa(card: ScorerCard, local_files_only: bool | None = None, **kw) -> QualityScorer:
    """Weights: a :class:`QualityNet` folder (``save_pretrained``); ``checkpoint: {source: none}`` builds it
    untrained from ``architecture.config`` (tests)."""
    path = resolve_checkpoint(card.name, card.checkpoint, local_files_only)
    model = QualityNet(**(card.architecture.config or {})) if path is None else QualityNet.from_pretrained(path)
    return QualityScorer(model, card=card, **kw)
