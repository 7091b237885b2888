"""Pluggable detectors for the semantic dimensions.

VBench answers object_class, multiple_objects, color and spatial_relationship with GRiT (ObjectDet
and DenseCap tasks) and scene with Tag2Text captions (Vchitect/VBench@45e79ec ``vbench/object_class.py``,
``multiple_objects.py``, ``color.py``, ``spatial_relationship.py``, ``scene.py``). A :class:`Detector`
here returns, per frame, a list of :class:`Detection` (class name, box, optional dense caption) and
optionally a caption of the frame; the dimensions apply VBench's formulas to them.

GRiT needs detectron2 (CUDA-only builds), so it is not bundled. Its labelled substitute is
``owlv2`` (:class:`Owlv2Detector`): the open-vocabulary detector OWLv2 (Minderer et al., "Scaling
Open-Vocabulary Object Detection", NeurIPS 2023) from transformers, asked for the dimension's
vocabulary — the 80 COCO class names GRiT's ObjectDet head answers with for object_class,
multiple_objects and spatial_relationship, and "<colour> <object>" phrases in place of GRiT's dense
captions for color. Its numbers are marked ``substitute:owlv2``, not comparable with VBench's
leaderboard. Tag2Text (scene) is not ported either; ``blip-caption`` (:class:`BlipCaptioner`, BLIP from
transformers with Tag2Text's decoding settings) is its labelled substitute. Other detectors plug in with :func:`register_detector` (the synthetic world registers
its exact one, ``synth-oracle``, this way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from mmalign.errors import ConfigError
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
    """What semantic dimensions consume: per-frame detections and captions of uint8 frames ``[N,3,H,W]``.

    A detector with ``open_vocabulary = True`` is called as ``detect(frames, queries=...)`` with the
    dimension's ``(label, phrase)`` queries: a detection of ``phrase`` comes back as
    ``Detection(label, box, score, caption=phrase)``.
    """

    name: str
    note: str

    def detect(self, frames: torch.Tensor) -> list[list[Detection]]: ...

    def caption(self, frames: torch.Tensor) -> list[str]: ...


#: the 80 COCO class names (Lin et al., "Microsoft COCO", ECCV 2014), GRiT ObjectDet's vocabulary in VBench
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


class Owlv2Detector:
    """OWLv2 (transformers ``Owlv2ForObjectDetection``) answering ``(label, phrase)`` queries per frame.

    Frames go through the model's own processor (pad to square, resize, CLIP normalisation); a box
    keeps the query of its highest score if that score (sigmoid) exceeds ``threshold``; boxes are
    then de-duplicated per label by NMS at IoU ``nms_iou`` (GRiT's detectron2 head applies NMS too)
    and returned in pixels of the original frame (clipped to it; boxes wholly in the square padding
    dropped), highest score first. ``threshold`` 0.3 is our
    choice, not calibrated against GRiT's 0.5 confidence.
    """

    open_vocabulary = True
    note = "substitute for GRiT (needs detectron2): OWLv2 open-vocabulary detector; not comparable with VBench"

    def __init__(self, model, processor, name: str = "owlv2", threshold: float = 0.3, nms_iou: float = 0.5,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32, batch_size: int = 8):
        self.model, self.processor, self.name = model.eval(), processor, name
        self.threshold, self.nms_iou, self.batch_size = threshold, nms_iou, batch_size
        self.device, self.dtype = device or torch.device("cpu"), dtype

    def detect(self, frames: torch.Tensor, queries: list[tuple[str, str]] = ()) -> list[list[Detection]]:
        from torchvision.ops import batched_nms

        if not queries:
            raise ValueError("Owlv2Detector.detect needs (label, phrase) queries")
        phrases = [p for _, p in queries]
        text = self.processor.tokenizer(phrases, padding="max_length", truncation=True,
                                        max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        h, w = frames.shape[-2:]
        side = max(h, w)  # OWLv2 pads bottom/right to a square: boxes in its pixels are the frame's
        out: list[list[Detection]] = []
        for i in range(0, frames.shape[0], self.batch_size):
            chunk = frames[i : i + self.batch_size]
            pix = self.processor.image_processor(images=list(chunk), return_tensors="pt")["pixel_values"]
            n = chunk.shape[0]
            with torch.no_grad():
                res = self.model(input_ids=text["input_ids"].repeat(n, 1).to(self.device),
                                 attention_mask=text["attention_mask"].repeat(n, 1).to(self.device),
                                 pixel_values=pix.to(self.device, self.dtype))
                res.logits, res.pred_boxes = res.logits.float().cpu(), res.pred_boxes.float().cpu()
            dets = self.processor.image_processor.post_process_object_detection(
                res, threshold=self.threshold, target_sizes=[(side, side)] * n)
            for d in dets:
                keep = batched_nms(d["boxes"], d["scores"], d["labels"], self.nms_iou)  # sorted by score
                frame = []
                for k in keep.tolist():
                    x0, x1 = d["boxes"][k, 0::2].clamp(0, w).tolist()
                    y0, y1 = d["boxes"][k, 1::2].clamp(0, h).tolist()
                    if x1 <= x0 or y1 <= y0:  # wholly in the square padding: not in the frame
                        continue
                    label, phrase = queries[int(d["labels"][k])]
                    frame.append(Detection(label, (x0, y0, x1, y1), float(d["scores"][k]), phrase))
                out.append(frame)
        return out

    def caption(self, frames: torch.Tensor) -> list[str]:
        raise ConfigError("OWLv2 detects, it does not caption: the scene dimension needs a captioner backbone "
                          "(tag2text or blip-caption) for the suite's 'captioner' role")


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


class BlipCaptioner:
    """BLIP (Li et al., "BLIP", ICML 2022; transformers ``BlipForConditionalGeneration``) as the scene captioner.

    Stands in for Tag2Text (``vbench/scene.py``), with Tag2Text's decoding settings: the prompt
    "a picture of ", beam search with 3 beams, 10 to 30 tokens, repetition penalty 1.0. Each frame
    gets one caption (returned as a single full-frame :class:`Detection` whose caption it is).
    """

    open_vocabulary = False
    note = "substitute for Tag2Text: BLIP captions; not comparable with VBench"

    def __init__(self, model, processor, name: str = "blip-caption", device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32, batch_size: int = 8, prompt: str = "a picture of "):
        self.model, self.processor, self.name, self.prompt = model.eval(), processor, name, prompt
        self.device, self.dtype, self.batch_size = device or torch.device("cpu"), dtype, batch_size

    def caption(self, frames: torch.Tensor) -> list[str]:
        out: list[str] = []
        for i in range(0, frames.shape[0], self.batch_size):
            chunk = list(frames[i : i + self.batch_size])
            enc = self.processor(images=chunk, text=[self.prompt] * len(chunk), return_tensors="pt")
            with torch.no_grad():
                ids = self.model.generate(pixel_values=enc["pixel_values"].to(self.device, self.dtype),
                                          input_ids=enc["input_ids"].to(self.device), num_beams=3, max_length=30,
                                          min_length=10, repetition_penalty=1.0)
            out += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out

    def detect(self, frames: torch.Tensor) -> list[list[Detection]]:
        h, w = frames.shape[-2:]
        return [[Detection("caption", (0.0, 0.0, float(w), float(h)), 1.0, c)] for c in self.caption(frames)]


def _from_local_or_cache(ctx: LoadContext, folder: str, hub_id: str, what: str, load):
    """``load(path)`` from ``<weights>/substitutes/<folder>`` if present, else ``hub_id`` from the HF cache."""
    local = ctx.weights_dir / "substitutes" / folder
    try:
        return load(local if local.is_dir() else hub_id)
    except OSError as err:
        raise BackboneMissing(f"{what}: not in {local} nor in the Hugging Face cache; "
                              f"`huggingface-cli download {hub_id}` or save_pretrained it to {local}") from err


def load_blip(path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> BlipCaptioner:
    """BLIP captioner from a local ``save_pretrained`` folder or a hub id already in the HF cache (no download)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
    return BlipCaptioner(model, BlipProcessor.from_pretrained(path, local_files_only=True), device=device, dtype=dtype)


#: BLIP checkpoint of the ``blip-caption`` substitute (``<weights>/substitutes/blip-caption`` first)
BLIP_ID = "Salesforce/blip-image-captioning-base"


@register_backbone("blip-caption")
def _blip(ctx: LoadContext) -> Backbone:
    cap = _from_local_or_cache(ctx, "blip-caption", BLIP_ID, "BLIP (substitute for Tag2Text)",
                               lambda p: load_blip(p, ctx.device, ctx.dtype))
    return DetectorBackbone("blip-caption", detector=cap, note=cap.note)


def load_owlv2(path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> Owlv2Detector:
    """OWLv2 from a local ``save_pretrained`` folder or a hub id already in the Hugging Face cache (no download)."""
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    model = Owlv2ForObjectDetection.from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
    processor = Owlv2Processor.from_pretrained(path, local_files_only=True)
    return Owlv2Detector(model, processor, device=device, dtype=dtype)


#: OWLv2 checkpoint of the ``owlv2`` substitute (``<weights>/substitutes/owlv2`` first)
OWLV2_ID = "google/owlv2-base-patch16-ensemble"


@register_backbone("owlv2")
def _owlv2(ctx: LoadContext) -> Backbone:
    det = _from_local_or_cache(ctx, "owlv2", OWLV2_ID, "OWLv2 (substitute for GRiT)",
                               lambda p: load_owlv2(p, ctx.device, ctx.dtype))
    return DetectorBackbone("owlv2", detector=det, note=det.note)


@register_backbone("grit")
def _grit(ctx: LoadContext) -> Backbone:
    raise BackboneMissing(
        "GRiT (object_class, multiple_objects, color, spatial_relationship) needs detectron2 and is not bundled; "
        "wrap it as a Detector, register it with mmalign.bench.detectors.register_detector('my-grit', factory) "
        "in a plugin module, and list 'my-grit' first for the detector role in your suite (with plugin: your.module)"
    )


@register_backbone("tag2text")
def _tag2text(ctx: LoadContext) -> Backbone:
    raise BackboneMissing("Tag2Text (scene) is not ported (Swin-B + BERT tagger and decoder); list 'blip-caption' "
                          "(a labelled substitute) after it for the captioner role, or register your own captioning "
                          "Detector (register_detector)")
