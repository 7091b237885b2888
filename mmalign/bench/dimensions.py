"""Benchmark dimensions: VBench's 16 (Huang et al., CVPR 2024) plus oracle dimensions of the synthetic world.

A dimension declares what it consumes (backbone *roles* and a frame :class:`Sampling`); the runner
decodes each video once, runs each backbone once per (video, sampling) and hands the shared
results to every dimension through a :class:`VideoInputs`. Decoding or loading a model inside a
dimension is a bug (STYLE.md "Metrics and benchmark dimensions").

``measure`` returns one per-video record in VBench's results layout (``video_results`` plus the
extras of reference §1.2) and two sufficient statistics ``num``/``den``; the aggregate is
Σnum/Σden, which reproduces VBench's 1-GPU aggregation (frame-weighted where VBench weights by
frames, video-weighted where it averages videos) and merges exactly across shards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from mmalign.bench import formulas as fm
from mmalign.bench.detectors import Detection


@dataclass(frozen=True)
class Sampling:
    """Which decoded frames a dimension uses: ``all``, ``middle`` (n, VBench 'middle'), ``fps`` (≈n fps)."""

    mode: str = "all"
    n: int = 0

    @property
    def key(self) -> str:
        return self.mode if self.mode == "all" else f"{self.mode}{self.n}"

    def indices(self, num_frames: int, fps: float) -> list[int]:
        if self.mode == "all":
            return list(range(num_frames))
        if self.mode == "middle":
            return fm.frame_indices(self.n, num_frames)
        if self.mode == "fps":
            return list(range(0, num_frames, fm.fps_interval(fps, self.n)))
        raise ValueError(f"unknown sampling mode {self.mode!r}")


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

    def flow(self, role: str, s: Sampling, wrap: bool = False) -> torch.Tensor: ...  # [P, H', W'] magnitudes

    def midpoints(self, role: str) -> torch.Tensor: ...  # uint8 [P, 3, H, W], predictions of odd frames

    def detections(self, role: str, s: Sampling) -> list[list[Detection]]: ...

    def oracle(self) -> dict[str, Any]: ...  # synthetic world: {"skills", "faithfulness", "quality"}

    def has(self, role: str) -> bool: ...


class Dimension:
    """One benchmark dimension. Subclasses set the class constants and implement :meth:`measure`."""

    name: ClassVar[str]
    group: ClassVar[str] = "quality"  # quality | semantic | extra
    roles: ClassVar[tuple[str, ...]] = ()  # backbone roles required
    optional_roles: ClassVar[tuple[str, ...]] = ()  # used when available
    sampling: ClassVar[Sampling] = ALL
    higher_is_better: ClassVar[bool] = True
    aux_key: ClassVar[str | None] = None  # auxiliary_info key the dimension needs

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


# ---------------------------------------------------------------------------------------------
# quality


class _Consistency(Dimension):
    role: ClassVar[str]

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        total, count = fm.consistency_sum(v.features(self.role, ALL))
        value = total / count if count else 1.0
        return {"video_results": value, "num": total, "den": count}


class SubjectConsistency(_Consistency):
    """§1.6.1: DINO CLS features; aggregate Σ_videos Σ_t s_t / Σ_videos (F−1) (1-GPU path)."""

    name = "subject_consistency"
    roles = ("dino",)
    role = "dino"


class BackgroundConsistency(_Consistency):
    """§1.6.2: CLIP ViT-B/32 features; aggregate Σ video_sim / Σ cnt."""

    name = "background_consistency"
    roles = ("clip",)
    role = "clip"

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        r = super().measure(v)
        r.update(video_sim=r["num"], cnt_per_video=r["den"])
        return r


class TemporalFlickering(Dimension):
    """§1.6.3: (255 − mean MAE)/255 over *static* videos; the static filter needs a flow backbone.

    VBench keeps the first ``keep_per_prompt`` (5) static videos per prompt (by file index). Without
    a flow backbone every video counts and the record says ``static_filter: "skipped"``.
    """

    name = "temporal_flickering"
    optional_roles = ("flow",)
    keep_per_prompt: ClassVar[int] = 5

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        value = fm.temporal_flickering(v.frames(ALL))
        rec: dict[str, Any] = {"video_results": value}
        if v.has("flow") and v.num_frames >= 2:
            mags = v.flow("flow", ALL, wrap=True)  # [F-1 + 2, H', W']
            scores = [fm.top_fraction_mean(m, 0.02) for m in mags]
            d = fm.is_static(scores[:-2], scores[-2:], v.height, v.width, v.num_frames)
            rec.update(static=d.static, static_filter="applied")
        else:
            rec.update(static=True, static_filter="skipped")
        rec.update(num=value if rec["static"] else 0.0, den=1.0 if rec["static"] else 0.0)
        return rec

    def aggregate(self, records: list[dict[str, Any]]) -> float | None:
        by_prompt: dict[str, list[tuple[int, dict]]] = {}
        for r in records:
            by_prompt.setdefault(r.get("prompt", ""), []).append((int(r.get("index", 0)), r))
        kept = []
        for items in by_prompt.values():
            static = [r for _, r in sorted(items, key=lambda t: t[0]) if r.get("static", True)]
            kept += static[: self.keep_per_prompt]
        return super().aggregate(kept)


class MotionSmoothness(Dimension):
    """§1.6.4: even frames → interpolated midpoints vs the odd frames; (255 − vfi)/255, mean over videos."""

    name = "motion_smoothness"
    roles = ("interp",)

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        frames = v.frames(ALL)
        preds = v.midpoints("interp")
        odd = frames[1::2]
        if preds.shape[0] == 0 or odd.shape[0] == 0:
            return None
        return self._mean(fm.motion_smoothness(odd, preds))


class DynamicDegree(Dimension):
    """§1.6.5: ≈8 fps subsampling, top-5% flow per pair, dynamic iff ≥ round(4·count/16) pairs > 6·min(H,W)/256."""

    name = "dynamic_degree"
    roles = ("flow",)
    sampling = FPS8

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        count = len(self.sampling.indices(v.num_frames, v.fps))
        mags = v.flow("flow", self.sampling)
        scores = [fm.top_fraction_mean(m, 0.05) for m in mags]
        dyn = fm.is_dynamic(scores, v.height, v.width, count)
        return {"video_results": dyn, "num": float(dyn), "den": 1.0}


class AestheticQuality(Dimension):
    """§1.6.6: LAION head on CLIP ViT-L/14, /10 per frame; mean over frames, then over videos."""

    name = "aesthetic_quality"
    roles = ("aesthetic",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        return self._mean(float(v.features("aesthetic", ALL).mean()))


class ImagingQuality(Dimension):
    """§1.6.7: MUSIQ per frame (0–100), per-video mean on 0–100, aggregate mean/100 (B10)."""

    name = "imaging_quality"
    roles = ("iqa",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        value = float(v.features("iqa", ALL).mean())
        return {"video_results": value, "num": value / 100.0, "den": 1.0}


# ---------------------------------------------------------------------------------------------
# semantic (detector-based)


def _labels(dets: list[Detection]) -> set[str]:
    return {d.label for d in dets}


class ObjectClass(Dimension):
    """§1.6.8: a frame succeeds iff the target class is detected; Σ success frames / Σ frames."""

    name = "object_class"
    group = "semantic"
    roles = ("detector",)
    sampling = MIDDLE16
    aux_key = "object_class"

    def targets(self, v: VideoInputs) -> list[str]:
        return [v.aux["object"]]

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        frames = v.detections("detector", self.sampling)
        want = self.targets(v)
        ok = sum(all(t in _labels(d) for t in want) for d in frames)
        return {"video_results": ok / len(frames), "success_frame_count": ok, "frame_count": len(frames),
                "num": float(ok), "den": float(len(frames))}


class MultipleObjects(ObjectClass):
    """§1.6.9: the label 'a and b' is split on ' and '; both must be detected in a frame."""

    name = "multiple_objects"
    aux_key = "multiple_objects"

    def targets(self, v: VideoInputs) -> list[str]:
        return v.aux["object"].split(" and ")


class Color(Dimension):
    """§1.6.10: DenseCap captions; color_frames / object_frames per video (videos with ≥1 object frame).

    Keeps VBench's ``det_obj[0]`` quirk: every instance is paired with the frame's *first* class.
    """

    name = "color"
    group = "semantic"
    roles = ("detector",)
    sampling = MIDDLE16
    aux_key = "color"

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        color = v.aux["color"]
        key = fm.color_object_key(v.prompt, color)
        obj_frames = color_frames = 0
        for dets in v.detections("detector", self.sampling):
            first = dets[0].label if dets else None
            hits = [d for d in dets if first == key and any(c in d.caption for c in fm.COLOR_WORDS)]
            if hits:
                obj_frames += 1
                color_frames += any(color in d.caption for d in hits)
        if obj_frames == 0:
            return None
        value = color_frames / obj_frames
        return {"video_results": value, "num": value, "den": 1.0}


class SpatialRelationship(Dimension):
    """§1.6.11: max pair score of boxes labelled object_a/object_b per frame; mean over all frames."""

    name = "spatial_relationship"
    group = "semantic"
    roles = ("detector",)
    sampling = MIDDLE16
    aux_key = "spatial_relationship"

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        info = v.aux["spatial_relationship"]
        names = {info["object_a"], info["object_b"]}
        frame_scores = []
        for dets in v.detections("detector", self.sampling):
            kept = [d for d in dets if d.label in names]
            pairs = [fm.spatial_pair_score(a.box, b.box, info["relationship"]) for a in kept for b in kept if a is not b]
            frame_scores.append(max([0.0, *pairs]))
        n = len(frame_scores)
        return {"video_results": sum(frame_scores) / n, "frame_results": frame_scores,
                "num": sum(frame_scores), "den": float(n)}


class Scene(Dimension):
    """§1.6.12: a frame succeeds iff every token of the scene label is in its caption; frame-weighted."""

    name = "scene"
    group = "semantic"
    roles = ("captioner",)
    sampling = MIDDLE16
    aux_key = "scene"

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        scene = v.aux["scene"]["scene"]
        caps = [" ".join(d.caption for d in dets) for dets in v.detections("captioner", self.sampling)]
        ok = sum(fm.scene_frame_success(c, scene) for c in caps)
        return {"video_results": ok / len(caps), "success_frame_count": ok, "frame_count": len(caps),
                "num": float(ok), "den": float(len(caps))}


class HumanAction(Dimension):
    """§1.6.13: UMT Kinetics-400 top-5 with p ≥ 0.85 must contain the label parsed from the file name."""

    name = "human_action"
    group = "semantic"
    roles = ("action",)

    @staticmethod
    def label_from_filename(path: str) -> str:
        """lower-case basename → before first '-' → after last 'person is ' → before first '_' (§1.3)."""
        base = path.replace("\\", "/").rsplit("/", 1)[-1].lower()
        return base.split("-")[0].split("person is ")[-1].split("_")[0]

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        raise NotImplementedError("human_action needs a UMT action classifier backbone ('action' role)")


# ---------------------------------------------------------------------------------------------
# semantic (text-video similarity)


class AppearanceStyle(Dimension):
    """§1.6.16: per-frame cos(CLIP image, CLIP style text) (= logits_per_text/100); frame-weighted (1 GPU)."""

    name = "appearance_style"
    group = "semantic"
    roles = ("clip",)
    aux_key = "appearance_style"

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        img = F.normalize(v.features("clip", ALL), dim=-1)  # [T, D]
        txt = F.normalize(v.text_features("clip", [v.aux["appearance_style"]]), dim=-1)  # [1, D]
        sims = (img @ txt.T).squeeze(-1).double()  # [T]
        return {"video_results": float(sims.mean()), "frame_results": sims.tolist(), "cur_sim": float(sims[-1]),
                "num": float(sims.sum()), "den": float(len(sims))}


class _VideoText(Dimension):
    """§1.6.14/15: cos(video embedding of 8 'middle' frames, prompt embedding); mean over videos.

    With ViCLIP absent the 'video_text' role falls back to a CLIP image tower: the video embedding
    is the normalised mean of the 8 frames' CLIP features (a labelled deviation).
    """

    group = "semantic"
    roles = ("video_text",)
    sampling = MIDDLE8

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        vid = F.normalize(F.normalize(v.features("video_text", self.sampling), dim=-1).mean(0, keepdim=True), dim=-1)
        txt = F.normalize(v.text_features("video_text", [v.prompt]), dim=-1)
        return self._mean(float((vid * txt).sum()))


class OverallConsistency(_VideoText):
    name = "overall_consistency"


class TemporalStyle(_VideoText):
    name = "temporal_style"


# ---------------------------------------------------------------------------------------------
# synthetic world (exact oracle)


class OracleSkill(Dimension):
    """Fraction of videos whose prompt tests ``skill`` and pass the synthetic world's oracle check."""

    group = "extra"
    roles = ("oracle",)
    skill: ClassVar[str]

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        skills = v.oracle()["skills"]
        if self.skill not in skills:
            return None
        ok = bool(skills[self.skill])
        return {"video_results": ok, "num": float(ok), "den": 1.0}


def _oracle_skill(dim_name: str, skill_name: str) -> type[OracleSkill]:
    return type(f"Oracle_{dim_name}", (OracleSkill,), {"name": dim_name, "skill": skill_name, "__doc__": OracleSkill.__doc__})


class Faithfulness(Dimension):
    """Oracle faithfulness: the fraction of the prompt's skills that pass, mean over videos."""

    name = "faithfulness"
    group = "extra"
    roles = ("oracle",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        return self._mean(float(v.oracle()["faithfulness"]))


class GenEvalTask(Dimension):
    """GenEval-style task on synthetic images (reference §5.3): an image is correct iff all checks pass."""

    group = "extra"
    roles = ("oracle",)
    kinds: ClassVar[tuple[str, ...]]
    checks: ClassVar[tuple[str, ...]]

    def measure(self, v: VideoInputs) -> dict[str, Any] | None:
        o = v.oracle()
        if o["kind"] not in self.kinds:
            return None
        ok = all(o["skills"].get(c, False) for c in self.checks)
        return {"video_results": ok, "num": float(ok), "den": 1.0}


def _geneval(name: str, kinds: tuple[str, ...], checks: tuple[str, ...]) -> type[GenEvalTask]:
    return type(f"GenEval_{name}", (GenEvalTask,), {"name": name, "kinds": kinds, "checks": checks})


GENEVAL_TASKS: dict[str, type[Dimension]] = {
    c.name: c
    for c in (
        _geneval("single_object", ("single",), ("shape",)),
        _geneval("colors", ("single",), ("color", "shape")),
        _geneval("counting", ("count",), ("color", "shape", "count")),
        _geneval("two_object", ("spatial",), ("color", "shape")),
        _geneval("position", ("spatial",), ("color", "shape", "spatial")),
    )
}


class PreferenceScore(Dimension):
    """HPSv2-style: cos(image, prompt) of a preference scorer's towers (HPS score/100), mean over frames."""

    name = "hps"
    group = "extra"
    roles = ("preference",)

    def measure(self, v: VideoInputs) -> dict[str, Any]:
        img = F.normalize(v.features("preference", ALL), dim=-1)  # [T, D]
        txt = F.normalize(v.text_features("preference", [v.prompt]), dim=-1)  # [1, D]
        return self._mean(float((img @ txt.T).mean()))


# ---------------------------------------------------------------------------------------------
# registry

VBENCH_DIMENSIONS: tuple[type[Dimension], ...] = (
    SubjectConsistency, BackgroundConsistency, TemporalFlickering, MotionSmoothness, DynamicDegree,
    AestheticQuality, ImagingQuality, ObjectClass, MultipleObjects, HumanAction, Color,
    SpatialRelationship, Scene, AppearanceStyle, TemporalStyle, OverallConsistency,
)
SYNTH_DIMENSIONS: tuple[type[Dimension], ...] = (
    Faithfulness, _oracle_skill("motion_direction", "motion"), _oracle_skill("static_scene", "static"),
    _oracle_skill("color_change", "change"), PreferenceScore, *GENEVAL_TASKS.values(),
)
DIMENSIONS: dict[str, type[Dimension]] = {c.name: c for c in (*VBENCH_DIMENSIONS, *SYNTH_DIMENSIONS)}


def get_dimension(name: str) -> Dimension:
    from mmalign.errors import ConfigError

    if name not in DIMENSIONS:
        import difflib

        near = difflib.get_close_matches(name, DIMENSIONS, n=3)
        raise ConfigError(f"unknown dimension {name!r}; nearest: {near}; known: {sorted(DIMENSIONS)}")
    return DIMENSIONS[name]()


def index_from_filename(path: str) -> int:
    """The ``i`` of VBench's ``{prompt}-{i}.mp4`` (0 when absent)."""
    m = re.search(r"-(\d+)$", path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return int(m.group(1)) if m else 0
