"""Benchmark backbones of the synthetic world, so the synth suites run on CPU with no downloaded weights.

The synth suites name this module as their ``plugin`` (``assets/suites/synth-*/suite.yaml``); importing it
registers the backbones with :func:`mmalign.bench.backbones.register_backbone`:

* ``synth-hps`` — the image and text towers of the shipped ``synth-hps`` scorer (trained on
  simulated annotators), the stand-in for CLIP/DINO features and for ViCLIP text–video similarity;
* ``synth-oracle-quality`` / ``synth-oracle-iqa`` — the oracle's per-frame image quality (palette
  noise × edge sharpness, :func:`mmalign.synth.oracle.image_quality`) on VBench's aesthetic (0–1)
  and imaging (0–100) scales; exact, not a learned model;
* ``synth-oracle-checks`` — the oracle's skill checks, faithfulness and quality of the whole item;
* ``synth-oracle`` — a :class:`~mmalign.bench.detectors.Detector` from the oracle's palette segmentation
  (:class:`SynthOracleDetector`) for the semantic dimensions that VBench answers with GRiT / Tag2Text.

Each backbone's ``note`` says what it stands in for; reports print it next to the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmalign.bench.backbones import (
    Backbone,
    BackboneMissing,
    FeatureBackbone,
    LoadContext,
    ScoreBackbone,
    register_backbone,
)
from mmalign.bench.detectors import Detection, register_detector
from mmalign.media import ImageBatch, VideoBatch
from mmalign.synth.oracle import evaluate, find_blobs, image_quality
from mmalign.synth.prompts import parse_prompt


def backbone_from_scorer(scorer, name: str, note: str = "", device: torch.device | None = None) -> FeatureBackbone:
    """A feature backbone from a CLIP-family scorer's towers (``image_features`` / ``text_features``),
    with the scorer's own preprocessing (frames /255 → ``scorer.preprocess``); features L2-normalised."""
    device = device or torch.device("cpu")

    def image(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(scorer.image_features(scorer.preprocess(x / 255.0)).float(), dim=-1)

    def text(texts: list[str]) -> torch.Tensor:
        return F.normalize(scorer.text_features(texts).float(), dim=-1)

    return FeatureBackbone(name, model=image, preprocess=lambda x: x.to(device), text_model=text, note=note, device=device)


@register_backbone("synth-hps")
def _synth_hps(ctx: LoadContext) -> Backbone:
    try:
        from mmalign.scoring import load_scorer  # type: ignore[attr-defined]

        scorer = load_scorer("synth-hps", device=str(ctx.device), dtype=ctx.dtype)
    except Exception as err:
        raise BackboneMissing(f"synth-hps scorer not available ({type(err).__name__}: {err}); "
                              "train it with `python -m mmalign.zoo.train_scorers --scorer synth-hps`") from err
    return backbone_from_scorer(scorer, "synth-hps", "stand-in: synth-hps scorer towers (not DINO/CLIP/ViCLIP)", ctx.device)


def _oracle_frame_quality(scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(frames: torch.Tensor) -> torch.Tensor:
        vals = [image_quality(f.float().numpy() / 255.0)["quality"] for f in frames]
        return torch.tensor(vals, dtype=torch.float64) * scale

    return score


register_backbone("synth-oracle-quality")(lambda ctx: ScoreBackbone(
    "synth-oracle-quality", score_fn=_oracle_frame_quality(1.0),
    note="synth oracle per-frame quality (palette noise x sharpness), not the LAION head"))
register_backbone("synth-oracle-iqa")(lambda ctx: ScoreBackbone(
    "synth-oracle-iqa", score_fn=_oracle_frame_quality(100.0),
    note="synth oracle per-frame quality x100, not MUSIQ"))


@dataclass
class OracleBackbone(Backbone):
    """The oracle's checks of one item (uint8 ``[T,3,H,W]``; T = 1 for images) against its prompt."""

    def __post_init__(self) -> None:
        self.kind = "oracle"

    def check(self, frames: torch.Tensor, prompt: str, modality: str) -> dict[str, Any]:
        x = frames.float() / 255.0
        media = ImageBatch(x[:1]) if modality == "image" else VideoBatch(x[None])
        r = evaluate(media, [prompt])
        return {"skills": r.skills[0], "faithfulness": float(r.faithfulness[0]), "quality": float(r.quality[0]),
                "kind": parse_prompt(prompt, modality).kind}


register_backbone("synth-oracle-checks")(lambda ctx: OracleBackbone("synth-oracle-checks", note="exact synth oracle"))


class SynthOracleDetector:
    """Detections of the synthetic world from its exact oracle (:func:`mmalign.synth.oracle.find_blobs`: palette
    segmentation, connected components, shape from fill ratio) per frame: label = shape word, box = the
    equal-area square around the blob's centre, dense caption = "a {color} {shape}", caption = the frame's objects."""

    name = "synth-oracle"
    note = "exact oracle of the synthetic world (palette segmentation), not GRiT/Tag2Text"

    def detect(self, frames: torch.Tensor) -> list[list[Detection]]:
        out = []
        for f in frames:
            dets = []
            for b in find_blobs(f.float().numpy() / 255.0):  # [3, H, W] in [0, 1]
                r = math.sqrt(b.area) / 2  # half side of the equal-area box
                dets.append(Detection(b.shape, (b.cx - r, b.cy - r, b.cx + r, b.cy + r), 1.0, f"a {b.color} {b.shape}"))
            out.append(dets)
        return out

    def caption(self, frames: torch.Tensor) -> list[str]:
        return [" and ".join(d.caption for d in dets) for dets in self.detect(frames)]


register_detector("synth-oracle", SynthOracleDetector)
