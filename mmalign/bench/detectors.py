"""Pluggable detectors for the semantic dimensions.

VBench answers object_class, multiple_objects, color and spatial_relationship with GRiT (ObjectDet
and DenseCap tasks) and scene with Tag2Text captions (Vchitect/VBench@45e79ec ``vbench/object_class.py``,
``multiple_objects.py``, ``color.py``, ``spatial_relationship.py``, ``scene.py``). A :class:`Detector`
here returns, per frame, a list of :class:`Detection` (class name, box, optional dense caption) and
optionally a caption of the frame; the dimensions apply VBench's formulas to them.

GRiT / Tag2Text are not bundled: register your own with :func:`register_detector` (the synthetic
world registers its exact one, ``synth-oracle``, this way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from mmalign.bench.backbones import (
    Backbone,
    BackboneMissing,
    LoadContext,
    register_backbone,
)


@dataclass(frozen=True)
class Detection:
    """One detected instance: class name, box (x0, y0, x1, y1) in pixels, score, dense caption."""

    label: str
    box: tuple[float, float, float, float]
    score: float = 1.0
    caption: str = ""


class Detector(Protocol):
    """What semantic dimensions consume: per-frame detections and captions of uint8 frames ``[N,3,H,W]``."""

    name: str
    note: str

    def detect(self, frames: torch.Tensor) -> list[list[Detection]]: ...

    def caption(self, frames: torch.Tensor) -> list[str]: ...


@dataclass
class DetectorBackbone(Backbone):
    """A detector wrapped as a backbone so the runner loads it once and shares its outputs."""

    detector: Detector | None = None

    def __post_init__(self) -> None:
        self.kind = "detector"


def register_detector(name: str, factory: Callable[[], Detector]) -> None:
    """Make a detector available to suites as backbone ``name`` (e.g. a GRiT wrapper); ``factory.note``, if
    any, labels its results."""
    register_backbone(name)(lambda ctx: DetectorBackbone(name, detector=factory(), note=getattr(factory, "note", "")))


@register_backbone("grit")
def _grit(ctx: LoadContext) -> Backbone:
    raise BackboneMissing(
        "GRiT (object_class, multiple_objects, color, spatial_relationship) needs detectron2 and is not bundled; "
        "wrap it as a Detector, register it with mmalign.bench.detectors.register_detector('my-grit', factory) "
        "in a plugin module, and list 'my-grit' first for the detector role in your suite (with plugin: your.module)"
    )


@register_backbone("tag2text")
def _tag2text(ctx: LoadContext) -> Backbone:
    raise BackboneMissing("Tag2Text (scene) is not bundled; register a captioning Detector under another name "
                          "(register_detector) and list it first for the captioner role in your suite")


@register_backbone("umt")
def _umt(ctx: LoadContext) -> Backbone:
    raise BackboneMissing("UMT ViT-L/16 (human_action) is not bundled; no Kinetics-400 classifier is available offline")


@register_backbone("viclip")
def _viclip(ctx: LoadContext) -> Backbone:
    raise BackboneMissing("ViCLIP (temporal_style, overall_consistency) is not bundled; the suites fall back to CLIP")
