"""The oracle: exact, model-free checks of what a medium of the synthetic world shows.

It works on *any* media of the world, rendered or generated (noisy, blurred, wrong colors, blobs):

* images — segmentation by nearest palette color, connected components, shape from the
  component's fill ratio and its top/bottom mass balance, centroids for spatial relations;
* videos — the same per frame, plus the main object's trajectory (motion / static) and its color
  at the start and end (change over time);
* audio — pitch per frame from the spectrum peak (register), note onsets from the energy
  envelope (tempo), harmonic profile at 2·f0 and 3·f0 (timbre).

Result: per-skill pass/fail, a faithfulness score (fraction of the prompt's skills that pass) and
quality measures in [0, 1] (palette noise and sharpness for images, flicker for videos, noise floor
and pitch stability for audio).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from mmalign.errors import InputError
from mmalign.media import AudioBatch, ImageBatch, Media, VideoBatch
from mmalign.synth.prompts import BACKGROUND, COLORS, DIRECTIONS, RELATIONS, TEMPOS, Spec, parse_prompt

_NAMES = ("background", *COLORS)
_PALETTE = np.asarray([BACKGROUND, *COLORS.values()], np.float32)  # [6, 3]
MIN_AREA = 8  # pixels (at 32×32); smaller components are specks, not objects
MAX_COLOR_DIST = 0.3  # farther than this from every palette color: unexplained pixel


@dataclass
class Blob:
    color: str
    shape: str
    area: int
    cx: float
    cy: float


@dataclass
class OracleResult:
    """Per-item skill checks, faithfulness and quality of a batch."""

    prompts: list[str]
    skills: list[dict[str, bool]]
    faithfulness: torch.Tensor
    quality: torch.Tensor
    details: list[dict[str, Any]] = field(default_factory=list)

    def per_skill_accuracy(self) -> dict[str, float]:
        """Fraction of items that pass each skill, over the items whose prompt tests it."""
        totals: dict[str, list[bool]] = {}
        for s in self.skills:
            for k, v in s.items():
                totals.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in sorted(totals.items())}

    def summary(self) -> dict[str, float]:
        out = {f"acc/{k}": v for k, v in self.per_skill_accuracy().items()}
        out["faithfulness"] = float(self.faithfulness.mean())
        out["quality"] = float(self.quality.mean())
        return out


# ---------------------------------------------------------------------------------------------
# images


def segment(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-palette label per pixel (0 = background, -1 = unexplained) and the distance to it."""
    px = img.transpose(1, 2, 0)[..., None, :]  # [H, W, 1, 3]
    d = np.sqrt(((px - _PALETTE) ** 2).sum(-1))  # [H, W, 6]
    label = d.argmin(-1)
    dist = d.min(-1)
    label[dist > MAX_COLOR_DIST] = -1
    return label, dist


def classify_shape(mask: np.ndarray) -> str:
    """Shape of one component: triangles are top-light; squares fill their box, circles about π/4 of it."""
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / (h * w)
    mid = (ys.min() + ys.max()) / 2
    top, bottom = (ys < mid).sum(), (ys > mid).sum()
    if top < 0.6 * bottom:
        return "triangle"
    return "square" if fill > 0.9 else "circle"


def find_blobs(img: np.ndarray, min_area: int | None = None) -> list[Blob]:
    """Objects of an image ``[3, H, W]``: palette-colored connected components, largest first."""
    size = img.shape[-1]
    min_area = min_area if min_area is not None else max(3, int(MIN_AREA * (size / 32) ** 2))
    label, _ = segment(img)
    blobs = []
    for ci, name in enumerate(_NAMES[1:], start=1):
        comp, n = ndimage.label(label == ci, structure=np.ones((3, 3)))
        for j in range(1, n + 1):
            m = comp == j
            area = int(m.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(m)
            blobs.append(Blob(name, classify_shape(m), area, float(xs.mean() + 0.5), float(ys.mean() + 0.5)))
    return sorted(blobs, key=lambda b: -b.area)


def image_quality(img: np.ndarray) -> dict[str, float]:
    """Palette noise (mean distance to the nearest palette color), sharpness, and their quality in [0, 1]."""
    _, dist = segment(img)
    noise = float(dist.mean())
    # sharpness: among pixels at an object edge, the fraction that are pure palette colors
    lum = img.mean(0)
    edge = ndimage.morphological_gradient(lum, size=3) > 0.15
    sharp = float((dist[edge] < 0.08).mean()) if edge.any() else 1.0
    quality = float(np.clip(1.0 - noise / 0.3, 0.0, 1.0)) * (0.5 + 0.5 * sharp)
    return {"noise": noise, "sharpness": sharp, "quality": quality}


def _relation_holds(a: Blob, b: Blob, relation: str) -> bool:
    sx, sy = RELATIONS[relation]
    dx, dy = a.cx - b.cx, a.cy - b.cy
    along, across = (dx * sx, abs(dy)) if sx else (dy * sy, abs(dx))
    return along >= 2.0 and across < along


def check_image(img: np.ndarray, spec: Spec) -> tuple[dict[str, bool], dict[str, Any]]:
    blobs = find_blobs(img)
    info: dict[str, Any] = {"blobs": [b.__dict__ for b in blobs]}
    if spec.kind == "single":
        main = blobs[0] if blobs else None
        (c, s) = spec.objects[0]
        return {"color": bool(main and main.color == c), "shape": bool(main and main.shape == s)}, info
    if spec.kind == "count":
        (c, s) = spec.objects[0]
        top = blobs[:2]
        return {
            "color": len(top) > 0 and all(b.color == c for b in top),
            "shape": len(top) > 0 and all(b.shape == s for b in top),
            "count": len(blobs) == 2,
        }, info
    # spatial: each named object is the largest blob of its color
    (c1, s1), (c2, s2) = spec.objects
    a = next((b for b in blobs if b.color == c1), None)
    b = next((x for x in blobs if x.color == c2), None)
    return {
        "color": a is not None and b is not None,
        "shape": a is not None and b is not None and a.shape == s1 and b.shape == s2,
        "spatial": a is not None and b is not None and _relation_holds(a, b, spec.relation),
    }, info


# ---------------------------------------------------------------------------------------------
# videos


def check_video(video: np.ndarray, spec: Spec) -> tuple[dict[str, bool], dict[str, Any], dict[str, float]]:
    """Skill checks of one video ``[T, 3, H, W]`` from the main object's per-frame blobs and trajectory."""
    mains = [(find_blobs(f) or [None])[0] for f in video]
    present = [m for m in mains if m is not None]
    size = video.shape[-1]
    info: dict[str, Any] = {"track": [None if m is None else (m.color, m.shape, m.cx, m.cy) for m in mains]}
    checks: dict[str, bool] = {}
    (c, s) = spec.objects[0]

    def majority(values: list[str], want: str) -> bool:
        return len(values) > 0 and sum(v == want for v in values) > len(video) / 2

    if "color" in spec.skills:
        checks["color"] = majority([m.color for m in present], c)
    checks["shape"] = majority([m.shape for m in present], s)
    full = all(m is not None for m in mains)
    if full:
        dx = (mains[-1].cx - mains[0].cx) / (size / 32)
        dy = (mains[-1].cy - mains[0].cy) / (size / 32)
        jumps = [np.hypot(b.cx - a.cx, b.cy - a.cy) / (size / 32) for a, b in zip(mains, mains[1:])]
    if spec.kind == "motion":
        ok = False
        if full:
            sx, sy = DIRECTIONS[spec.direction]
            along, across = (dx * sx, abs(dy)) if sx else (dy * sy, abs(dx))
            ok = along >= 4.0 and across < 0.5 * along
        checks["motion"] = ok
    if spec.kind == "static":
        checks["static"] = full and max(jumps, default=0.0) < 1.0 and np.hypot(dx, dy) < 1.5
    if spec.kind == "change":
        checks["change"] = mains[0] is not None and mains[-1] is not None and (
            mains[0].color == c and mains[-1].color == spec.color_to
        )
    # quality: per-frame palette noise and flicker of the background between frames
    per_frame = [image_quality(f) for f in video]
    labels = [segment(f)[0] == 0 for f in video]
    diffs = [
        float(np.abs(b - a)[:, la & lb].mean()) if (la & lb).any() else 0.0
        for a, b, la, lb in zip(video, video[1:], labels, labels[1:])
    ]
    flicker = float(np.mean(diffs)) if diffs else 0.0
    img_q = float(np.mean([q["quality"] for q in per_frame]))
    quality = {
        "noise": float(np.mean([q["noise"] for q in per_frame])),
        "flicker": flicker,
        "quality": img_q * float(np.clip(1.0 - flicker / 0.1, 0.0, 1.0)),
    }
    return checks, info, quality


# ---------------------------------------------------------------------------------------------
# audio

FRAME, HOP, NFFT = 1024, 256, 8192


def _spectra(x: np.ndarray) -> np.ndarray:
    n = 1 + max(0, (len(x) - FRAME) // HOP)
    frames = np.stack([x[i * HOP : i * HOP + FRAME] for i in range(n)]) if len(x) >= FRAME else x[None]
    win = np.hanning(frames.shape[1])
    return np.abs(np.fft.rfft(frames * win, n=NFFT, axis=1))


def analyze_audio(x: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """Pitch track, onsets and harmonic profile of a mono clip."""
    spec = _spectra(x)
    freqs = np.fft.rfftfreq(NFFT, 1 / sample_rate)
    band = (freqs >= 80) & (freqs <= 1500)
    energy = np.array([np.sqrt(np.mean(x[i * HOP : i * HOP + FRAME] ** 2)) for i in range(spec.shape[0])])
    voiced = energy > max(0.02, 0.2 * energy.max(initial=0.0))
    f0 = np.full(spec.shape[0], np.nan)
    h2, h3, floor = [], [], []
    for i in np.nonzero(voiced)[0]:
        s = spec[i]
        k = int(np.argmax(np.where(band, s, 0)))
        f = freqs[k]
        f0[i] = f
        amp = lambda hz: s[max(0, int(round(hz / freqs[1])) - 3) : int(round(hz / freqs[1])) + 4].max()  # noqa: E731
        a1 = amp(f)
        h2.append(amp(2 * f) / a1 if 2 * f < sample_rate / 2 else 0.0)
        h3.append(amp(3 * f) / a1 if 3 * f < sample_rate / 2 else 0.0)
        # noise floor: median spectrum level relative to the fundamental's peak
        floor.append(float(np.median(s) / a1))
    # onsets on a 10 ms RMS envelope: rises above half the peak after being below a quarter
    hop = sample_rate // 100
    env = np.array([np.sqrt(np.mean(x[i : i + hop] ** 2)) for i in range(0, len(x) - hop + 1, hop)])
    peak = env.max(initial=0.0)
    onsets, armed = 0, True
    for v in env:
        if armed and v > 0.5 * peak and peak > 0.01:
            onsets += 1
            armed = False
        elif v < 0.25 * peak:
            armed = True
    midi = 69 + 12 * np.log2(f0[voiced] / 440.0) if voiced.any() else np.array([])
    return {
        "midi_median": float(np.median(midi)) if len(midi) else float("nan"),
        "onsets": onsets,
        "rate": onsets / (len(x) / sample_rate),
        "h2": float(np.median(h2)) if h2 else float("nan"),
        "h3": float(np.median(h3)) if h3 else float("nan"),
        "noise_floor": float(np.median(floor)) if floor else 1.0,
        "pitch_jitter": _pitch_jitter(midi),
    }


def _pitch_jitter(midi: np.ndarray) -> float:
    """Median absolute frame-to-frame pitch change (semitones) among steps below a semitone (within notes)."""
    if len(midi) < 2:
        return 0.0
    steps = np.abs(np.diff(midi))
    within = steps[steps < 1.0]
    return float(np.mean(within)) if len(within) else 0.0


def classify_timbre(h2: float, h3: float) -> str:
    if not np.isfinite(h2) or not np.isfinite(h3):
        return "none"
    if h2 < 0.12 and h3 < 0.12:
        return "sine"
    return "sawtooth" if h2 > 0.25 else "square"


def classify_register(midi: float) -> str:
    if not np.isfinite(midi):
        return "none"
    return "low" if midi < 56.5 else ("mid" if midi < 68 else "high")


def check_audio(x: np.ndarray, sample_rate: int, spec: Spec) -> tuple[dict[str, bool], dict[str, Any], dict[str, float]]:
    a = analyze_audio(x, sample_rate)
    tempo = "fast" if a["rate"] > np.sqrt(TEMPOS["slow"] * TEMPOS["fast"]) else "slow"
    checks = {
        "register": classify_register(a["midi_median"]) == spec.register,
        "tempo": tempo == spec.tempo and a["onsets"] > 0,
        "timbre": classify_timbre(a["h2"], a["h3"]) == spec.timbre,
    }
    quality = {
        "noise_floor": a["noise_floor"],
        "pitch_jitter": a["pitch_jitter"],
        "quality": float(np.clip(1.0 - a["noise_floor"] / 0.05, 0.0, 1.0) * np.clip(1.0 - a["pitch_jitter"] / 1.0, 0.0, 1.0)),
    }
    return checks, a, quality


# ---------------------------------------------------------------------------------------------


def evaluate(media: Media, prompts: Sequence[str] | None = None) -> OracleResult:
    """Check every item of ``media`` against its prompt (``prompts`` or ``media.prompts``)."""
    prompts = list(prompts) if prompts is not None else media.prompts
    if prompts is None:
        raise InputError("oracle: no prompts given and the media carry none")
    if len(prompts) != len(media):
        raise InputError(f"oracle: {len(prompts)} prompts for {len(media)} media items; give one per item")
    data = media.data.detach().float().cpu().numpy()
    skills, faith, quality, details = [], [], [], []
    for i, (x, p) in enumerate(zip(data, prompts)):
        spec = parse_prompt(p, media.modality)
        if isinstance(media, ImageBatch):
            x = np.clip(x, 0, 1)
            checks, info = check_image(x, spec)
            q = image_quality(x)
        elif isinstance(media, VideoBatch):
            checks, info, q = check_video(np.clip(x, 0, 1), spec)
        elif isinstance(media, AudioBatch):
            checks, info, q = check_audio(x.mean(0), media.sample_rate, spec)
        else:
            raise InputError(f"oracle: unsupported media type {type(media).__name__}")
        checks = {k: bool(v) for k, v in checks.items()}
        skills.append(checks)
        faith.append(float(np.mean(list(checks.values()))))
        quality.append(q["quality"])
        details.append({**info, **q})
    return OracleResult(list(prompts), skills, torch.tensor(faith), torch.tensor(quality), details)
