"""Benchmark dimensions: VBench's 16 (Huang et al., CVPR 2024) plus oracle dimensions of the synthetic world.

A dimension declares what it consumes (backbone *roles* and a frame :class:`Sampling`); the runner
decodes each video once, runs each backbone once per (video, sampling) and hands the shared
results to every dimension through a :class:`VideoInputs`, so a dimension never decodes a file or
loads a model itself. Dimensions are registered by name in :data:`DIMENSIONS`
(``@DIMENSIONS.register("name")``); :func:`get_dimension` builds one.

``measure`` returns one per-video record in VBench's results layout (``video_results`` plus the
per-dimension extras of ``{name}_eval_results.json``) and two sufficient statistics ``num``/``den``;
the aggregate is Σnum/Σden, which reproduces VBench's 1-GPU aggregation (frame-weighted where
VBench weights by frames, video-weighted where it averages videos) and merges exactly across
shards. Docstrings name the upstream file of each dimension (Vchitect/VBench@45e79ec ``vbench/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
import torch.nn.functional as F

from mmalign.bench import formulas as fm
from mmalign.bench.action import action_correct
from mmalign.bench.detectors import COCO_CLASSES, Detection
from mmalign.errors import ConfigError
from mmalign.registry import Registry


@dataclass(frozen=True)
class Sampling:
    """Which decoded frames a dimension uses: ``all``, ``middle`` (n, VBench 'middle'), ``fps`` (≈n fps)."""

    mode: Literal["all", "middle", "fps"] = "all"
    n: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("all", "middle", "fps") or (self.mode != "all" and self.n < 1):
            raise ConfigError(f"Sampling({self.mode!r}, {self.n}): mode must be 'all', or 'middle'/'fps' with n >= 1")

    @property
    def key(self) -> str:
        return self.mode if self.mode == "all" else f"{self.mode}{self.n}"

    def indices(self, num_frames: int, fps: float) -> list[int]:
        if self.mode == "all":
            return list(range(num_frames))
        if self.mode == "middle":
            return fm.frame_indices(self.n, num_frames)
        return list(range(0, num_frames, fm.fps_interval(fps, self.n)))


ALL = Sampling("all")
MIDDLE16 = Sampling("middle", 16)
MIDDLE8 = Sampling("middle", 8)
FPS8 = Sampling("fps", 8)


class VideoInputs(Protocol):
    """Shared, lazily computed inputs of one video (implemented by the runner)."""

    path: str
    prompt: str
    aux: dict[str, Any]
    fps: float
    num_frames: int
    height: int
    width: int

    def frames(self, s: Sampling) -> torch.Tensor: ...  # uint8 [T, 3, H, W]

    def features(self, role: str, s: Sampling) -> torch.Tensor: ...  # [T, D] (scores: [T, 1])

    def text_features(self, role: str, texts: list[str]) -> torch.Tensor: ...  # [N, D]

    def video_features(self, role: str, s: Sampling) -> torch.Tensor: ...  # [D], one normalised embedding per video

    def flow(self, role: str, s: Sampling) -> torch.Tensor: ...  # [P, H', W'] magnitudes of consecutive pairs

    def midpoints(self, role: str) -> torch.Tensor: ...  # uint8 [P, 3, H, W], predictions of odd frames

    def detections(self, role: str, s: Sampling, queries: list[tuple[str, str]] | None = None) -> list[list[Detection]]: ...

    def classify(self, role: str, s: Sampling) -> tuple[torch.Tensor, tuple[str, ...]]: ...  # video logits [C], names

    def oracle(self) -> dict[str, Any]: ...  # synthetic world: {"skills", "faithfulness", "quality"}


class Dimension:
    """One benchmark dimension. Subclasses set the class constants and implement :meth:`measure`."""

    group: ClassVar[str] = "quality"  # quality | semantic | extra
    roles: ClassVar[tuple[str, ...]] = ()  # backbone roles required
    sampling: ClassVar[Sampling] = ALL
    higher_is_better: ClassVar[bool] = True

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        """Per-video record ``{"video_results", ..., "num", "den"}``, or ``None`` if it does not count."""
        raise NotImplementedError

    def aggregate(self, records: list[dict[str, Any]]) -> float | None:
        """Σ num / Σ den over the records (``None`` when nothing counted)."""
        num = sum(float(r.get("num", 0.0)) for r in records)
        den = sum(float(r.get("den", 0.0)) for r in records)
        return num / den if den > 0 else None

    @staticmethod
    def _mean(value: float) -> dict[str, Any]:
        return {"video_results": value, "num": value, "den": 1.0}

    @staticmethod
    def _success(ok: bool) -> dict[str, Any]:
        """A pass/fail video (VBench keeps the bool as ``video_results``); aggregate = fraction passed."""
        return {"video_results": ok, "num": float(ok), "den": 1.0}


#: dimension name -> its class (VBench's 16, then the synthetic world's)
DIMENSIONS: Registry[type[Dimension]] = Registry("dimension")


# ---------------------------------------------------------------------------------------------
# quality


class _Consistency(Dimension):
    role: ClassVar[str]

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        total, count = fm.consistency_sum(v.features(self.role, ALL))
        value = total / count if count else 1.0
        return {"video_results": value, "num": total, "den": count}


@DIMENSIONS.register("subject_consistency")
class SubjectConsistency(_Consistency):
    """``subject_consistency.py``: DINO CLS features; aggregate Σ_videos Σ_t s_t / Σ_videos (F−1) (1-GPU path)."""

    roles = ("dino",)
    role = "dino"


@DIMENSIONS.register("background_consistency")
class BackgroundConsistency(_Consistency):
    """``background_consistency.py``: CLIP ViT-B/32 features; aggregate Σ video_sim / Σ cnt."""

    roles = ("clip",)
    role = "clip"

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        r = super().measure(v)
        r.update(video_sim=r["num"], cnt_per_video=r["den"])
        return r


@DIMENSIONS.register("temporal_flickering")
class TemporalFlickering(Dimension):
    """``temporal_flickering.py``: (255 − mean MAE)/255 per video, mean over the videos it is given.

    VBench meant it for static videos and selects them in a separate preprocessing step
    (``vbench/cli/static_filter.py``); here that step is :func:`mmalign.bench.static_filter.static_filter`
    (``mmalign bench static-filter``), never applied silently inside the dimension.
    """

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        return self._mean(fm.temporal_flickering(v.frames(ALL)))


@DIMENSIONS.register("motion_smoothness")
class MotionSmoothness(Dimension):
    """``motion_smoothness.py``: even frames → interpolated midpoints vs the odd frames; (255 − vfi)/255, mean over videos."""

    roles = ("interp",)

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        frames = v.frames(ALL)
        preds = v.midpoints("interp")
        odd = frames[1::2]
        if preds.shape[0] == 0 or odd.shape[0] == 0:
            return None
        return self._mean(fm.motion_smoothness(odd, preds))


@DIMENSIONS.register("dynamic_degree")
class DynamicDegree(Dimension):
    """``dynamic_degree.py``: ≈8 fps subsampling, top-5% flow per pair, dynamic iff ≥ round(4·count/16)
    pairs > 6·min(H,W)/256."""

    roles = ("flow",)
    sampling = FPS8

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        count = len(self.sampling.indices(v.num_frames, v.fps))
        mags = v.flow("flow", self.sampling)
        scores = [fm.top_fraction_mean(m, 0.05) for m in mags]
        return self._success(fm.is_dynamic(scores, v.height, v.width, count))


@DIMENSIONS.register("aesthetic_quality")
class AestheticQuality(Dimension):
    """``aesthetic_quality.py``: LAION head on CLIP ViT-L/14, /10 per frame; mean over frames, then over videos."""

    roles = ("aesthetic",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        return self._mean(float(v.features("aesthetic", ALL).mean()))


@DIMENSIONS.register("imaging_quality")
class ImagingQuality(Dimension):
    """``imaging_quality.py``: MUSIQ per frame (0–100), per-video mean on 0–100, aggregate mean/100."""

    roles = ("iqa",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        value = float(v.features("iqa", ALL).mean())
        return {"video_results": value, "num": value / 100.0, "den": 1.0}


# ---------------------------------------------------------------------------------------------
# semantic (detector-based)


def _labels(dets: list[Detection]) -> set[str]:
    return {d.label for d in dets}


class _Detections(Dimension):
    """A semantic dimension on the detections (or captions) of VBench's 16 'middle' frames.

    :meth:`queries` is the vocabulary an open-vocabulary substitute is asked for (GRiT's ObjectDet
    answers with COCO class names); a closed-set detector ignores it.
    """

    group = "semantic"
    roles = ("detector",)
    sampling = MIDDLE16

    def queries(self, v: VideoInputs) -> list[tuple[str, str]]:
        return [(c, c) for c in COCO_CLASSES]

    def _detections(self, v: VideoInputs) -> list[list[Detection]]:
        return v.detections(self.roles[0], self.sampling, self.queries(v))


@DIMENSIONS.register("object_class")
class ObjectClass(_Detections):
    """``object_class.py``: a frame succeeds iff the target class is detected; Σ success frames / Σ frames."""

    def targets(self, v: VideoInputs) -> list[str]:
        return [v.aux["object"]]

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        frames = self._detections(v)
        want = self.targets(v)
        ok = sum(all(t in _labels(d) for t in want) for d in frames)
        return {"video_results": ok / len(frames), "success_frame_count": ok, "frame_count": len(frames),
                "num": float(ok), "den": float(len(frames))}


@DIMENSIONS.register("multiple_objects")
class MultipleObjects(ObjectClass):
    """``multiple_objects.py``: the label 'a and b' is split on ' and '; both must be detected in a frame."""

    def targets(self, v: VideoInputs) -> list[str]:
        return v.aux["object"].split(" and ")


@DIMENSIONS.register("color")
class Color(_Detections):
    """``color.py``: DenseCap captions; color_frames / object_frames per video (videos with ≥1 object frame).

    Keeps VBench's ``det_obj[0]`` quirk: every instance is paired with the frame's *first* class.
    An open-vocabulary substitute is asked for "<colour> <object>" for every colour word: its
    detections of the object carry the colour phrase as their caption.
    """

    def queries(self, v: VideoInputs) -> list[tuple[str, str]]:
        key = fm.color_object_key(v.prompt, v.aux["color"])
        return [(key, f"{c} {key}") for c in fm.COLOR_WORDS]

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        color = v.aux["color"]
        key = fm.color_object_key(v.prompt, color)
        obj_frames = color_frames = 0
        for dets in self._detections(v):
            first = dets[0].label if dets else None
            hits = [d for d in dets if first == key and any(c in d.caption for c in fm.COLOR_WORDS)]
            if hits:
                obj_frames += 1
                color_frames += any(color in d.caption for d in hits)
        if obj_frames == 0:
            return None
        value = color_frames / obj_frames
        return {"video_results": value, "num": value, "den": 1.0}


@DIMENSIONS.register("spatial_relationship")
class SpatialRelationship(_Detections):
    """``spatial_relationship.py``: max pair score of boxes labelled object_a/object_b per frame; mean over all frames."""

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        info = v.aux["spatial_relationship"]
        names = {info["object_a"], info["object_b"]}
        frame_scores = []
        for dets in self._detections(v):
            kept = [d for d in dets if d.label in names]
            pairs = [fm.spatial_pair_score(a.box, b.box, info["relationship"]) for a in kept for b in kept if a is not b]
            frame_scores.append(max([0.0, *pairs]))
        n = len(frame_scores)
        return {"video_results": sum(frame_scores) / n, "frame_results": frame_scores,
                "num": sum(frame_scores), "den": float(n)}


@DIMENSIONS.register("scene")
class Scene(_Detections):
    """``scene.py``: a frame succeeds iff every token of the scene label is in its caption; frame-weighted."""

    roles = ("captioner",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        scene = v.aux["scene"]["scene"]
        caps = [" ".join(d.caption for d in dets) for dets in v.detections("captioner", self.sampling)]  # closed set
        ok = sum(fm.scene_frame_success(c, scene) for c in caps)
        return {"video_results": ok / len(caps), "success_frame_count": ok, "frame_count": len(caps),
                "num": float(ok), "den": float(len(caps))}


@DIMENSIONS.register("human_action")
class HumanAction(Dimension):
    """``human_action.py``: a Kinetics-400 classifier (UMT) on 16 'middle' frames; correct iff the label
    parsed from the file name is among the top-5 classes with round(sigmoid(logit), 4) ≥ 0.85;
    accuracy over videos."""

    group = "semantic"
    roles = ("action",)
    sampling = MIDDLE16

    @staticmethod
    def label_from_filename(path: str) -> str:
        """lower-case basename → before first '-' → after last 'person is ' → before first '_'."""
        base = path.replace("\\", "/").rsplit("/", 1)[-1].lower()
        return base.split("-")[0].split("person is ")[-1].split("_")[0]

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        logits, labels = v.classify("action", self.sampling)
        ok = action_correct(logits, labels, self.label_from_filename(v.path))
        return {**self._success(ok), "cor_num_per_video": int(ok)}


# ---------------------------------------------------------------------------------------------
# semantic (text-video similarity)


def _frame_text_cosines(v: VideoInputs, role: str, text: str) -> torch.Tensor:
    """cos(frame feature, text feature) of every frame ``[T]``, both from the towers of ``role``."""
    img = F.normalize(v.features(role, ALL), dim=-1)  # [T, D]
    txt = F.normalize(v.text_features(role, [text]), dim=-1)  # [1, D]
    return (img @ txt.T).squeeze(-1)


@DIMENSIONS.register("appearance_style")
class AppearanceStyle(Dimension):
    """``appearance_style.py``: per-frame cos(CLIP image, CLIP style text) (= logits_per_text/100); frame-weighted (1 GPU)."""

    group = "semantic"
    roles = ("clip",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        sims = _frame_text_cosines(v, "clip", v.aux["appearance_style"]).double()
        return {"video_results": float(sims.mean()), "frame_results": sims.tolist(), "cur_sim": float(sims[-1]),
                "num": float(sims.sum()), "den": float(len(sims))}


class _VideoText(Dimension):
    """``temporal_style.py`` / ``overall_consistency.py``: cos(ViCLIP embedding of 8 'middle' frames,
    ViCLIP embedding of the prompt); mean over videos.

    With ViCLIP absent the 'video_text' role falls back to a CLIP image tower: the video embedding
    is the normalised mean of the 8 frames' CLIP features (a labelled substitute).
    """

    group = "semantic"
    roles = ("video_text",)
    sampling = MIDDLE8

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        vid = v.video_features("video_text", self.sampling)  # [D], normalised
        txt = F.normalize(v.text_features("video_text", [v.prompt]), dim=-1)[0]
        return self._mean(float((vid * txt).sum()))


@DIMENSIONS.register("overall_consistency")
class OverallConsistency(_VideoText):
    """VBench ``overall_consistency``: video–text similarity with the overall (ViCLIP) video embedding."""


@DIMENSIONS.register("temporal_style")
class TemporalStyle(_VideoText):
    """VBench ``temporal_style``: video–text similarity against prompts that name a camera or temporal style."""


# ---------------------------------------------------------------------------------------------
# synthetic world (exact oracle)


class OracleSkill(Dimension):
    """Fraction of videos whose prompt tests ``skill`` and pass the synthetic world's oracle check."""

    group = "extra"
    roles = ("oracle",)
    skill: ClassVar[str]

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        skills = v.oracle()["skills"]
        return self._success(bool(skills[self.skill])) if self.skill in skills else None


for _dim, _skill in (("motion_direction", "motion"), ("static_scene", "static"), ("color_change", "change")):
    DIMENSIONS.register(_dim)(type(f"OracleSkill_{_skill}", (OracleSkill,), {"skill": _skill, "__doc__": OracleSkill.__doc__}))


@DIMENSIONS.register("faithfulness")
class Faithfulness(Dimension):
    """Oracle faithfulness: the fraction of the prompt's skills that pass, mean over videos."""

    group = "extra"
    roles = ("oracle",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        return self._mean(float(v.oracle()["faithfulness"]))


class GenEvalTask(Dimension):
    """GenEval-style task on synthetic images (Ghosh et al. 2023, djghosh13/geneval@af4902f): an image of
    a prompt of one of ``kinds`` is correct iff all ``checks`` pass."""

    group = "extra"
    roles = ("oracle",)
    kinds: ClassVar[tuple[str, ...]]
    checks: ClassVar[tuple[str, ...]]

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        o = v.oracle()
        if o["kind"] not in self.kinds:
            return None
        return self._success(all(o["skills"].get(c, False) for c in self.checks))


#: GenEval task -> (prompt kinds it applies to, oracle checks that must pass); overall = unweighted mean
GENEVAL_TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "single_object": (("single",), ("shape",)),
    "colors": (("single",), ("color", "shape")),
    "counting": (("count",), ("color", "shape", "count")),
    "two_object": (("spatial",), ("color", "shape")),
    "position": (("spatial",), ("color", "shape", "spatial")),
}
for _task, (_kinds, _checks) in GENEVAL_TASKS.items():
    DIMENSIONS.register(_task)(type(f"GenEval_{_task}", (GenEvalTask,), {"kinds": _kinds, "checks": _checks}))


@DIMENSIONS.register("hps")
class PreferenceScore(Dimension):
    """HPSv2-style: cos(image, prompt) of a preference scorer's towers (HPS score/100), mean over frames."""

    group = "extra"
    roles = ("preference",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        return self._mean(float(_frame_text_cosines(v, "preference", v.prompt).mean()))


def get_dimension(name: str) -> Dimension:
    """A new instance of the dimension registered as ``name`` (a ConfigError names the nearest)."""
    return DIMENSIONS.get(name)()


def index_from_filename(path: str) -> int:
    """The ``i`` of VBench's ``{prompt}-{i}.mp4`` (0 when absent)."""
    m = re.search(r"-(\d+)$", path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return int(m.group(1)) if m else 0
