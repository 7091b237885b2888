"""Renderers of the synthetic world: prompt -> media with exact ground truth.

Images are hard-edged shapes on a near-black background (32×32 by default), videos the same
scenes over ``frames`` frames (8 by default), audio band-limited synth melodies (16 kHz, 1 s mono
by default). Every item carries its ground truth in ``metadata`` (positions, sizes, notes, ...).
Rendering is a pure function of (prompt, seed, index): item ``i`` of a call with ``seed`` is drawn
from ``numpy.random.default_rng([seed, i])``, so it does not depend on the batch it is in.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mmalign.errors import InputError
from mmalign.media import AudioBatch, ImageBatch, Media, VideoBatch
from mmalign.synth.prompts import (
    BACKGROUND,
    COLORS,
    DIRECTIONS,
    REGISTERS,
    RELATIONS,
    TEMPOS,
    Spec,
    parse_prompt,
)

# ---------------------------------------------------------------------------------------------
# shapes


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean mask ``[size, size]`` of a hard-edged shape of half-size ``r`` centred at (cx, cy)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if shape == "square":
        h = 0.88 * r  # about the circle's area
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    if shape == "triangle":  # apex up, base down; height 2r, base width 2.2r
        top, bottom = cy - r, cy + r
        half_width = 1.1 * r * (y - top) / (bottom - top)
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_width)
    raise InputError(f"unknown shape {shape!r}")


def _canvas(size: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(BACKGROUND, np.float32)[:, None, None], (3, size, size)).copy()


def _paint(img: np.ndarray, mask: np.ndarray, color: str) -> None:
    img[:, mask] = np.asarray(COLORS[color], np.float32)[:, None]


def _layout_one(rng: np.random.Generator, size: int, r: float, margin: float = 1.0) -> tuple[float, float]:
    lo, hi = r + margin, size - r - margin
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _layout_pair(rng: np.random.Generator, size: int, relation: str | None, r: float) -> list[tuple[float, float]]:
    """Two centres that do not overlap; for a relation, the first is clearly on that side of the second."""
    lo, hi = r + 1.0, size - r - 1.0
    for _ in range(1000):
        b = _layout_one(rng, size, r)
        if relation is None:
            a = _layout_one(rng, size, r)
            if max(abs(a[0] - b[0]), abs(a[1] - b[1])) < 2 * r + 2:
                continue
        else:
            sx, sy = RELATIONS[relation]
            along = float(rng.uniform(2 * r + 2, hi - lo))
            across = float(rng.uniform(-0.4, 0.4)) * along
            a = (b[0] + sx * along + abs(sy) * across, b[1] + sy * along + abs(sx) * across)
            if not (lo <= a[0] <= hi and lo <= a[1] <= hi):
                continue
        return [a, b]
    raise InputError(f"could not lay out two objects of size {r} in {size}px for relation {relation!r}")


def render_image_spec(spec: Spec, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, dict[str, Any]]:
    """One image ``[3, size, size]`` float32 for ``spec`` and its ground truth."""
    img = _canvas(size)
    s = size / 32
    if spec.kind == "single":
        r = float(rng.uniform(6, 9)) * s
        centres = [_layout_one(rng, size, r)]
        objects = [spec.objects[0]]
    else:
        r = float(rng.uniform(4.5, 6)) * s
        centres = _layout_pair(rng, size, spec.relation, r)
        objects = [spec.objects[0]] * 2 if spec.kind == "count" else list(spec.objects)
    truth = []
    for (color, shape), (cx, cy) in zip(objects, centres):
        _paint(img, shape_mask(shape, cx, cy, r, size), color)
        truth.append({"color": color, "shape": shape, "cx": cx, "cy": cy, "r": r})
    return img, {"prompt": spec.text, "kind": spec.kind, "objects": truth}


def render_video_spec(
    spec: Spec, rng: np.random.Generator, size: int = 32, frames: int = 8
) -> tuple[np.ndarray, dict[str, Any]]:
    """One video ``[T, 3, size, size]`` float32 for ``spec`` and its ground truth."""
    (color, shape) = spec.objects[0]
    s = size / 32
    r = float(rng.uniform(5, 7)) * s
    travel = float(rng.uniform(10, 14)) * s if spec.kind == "motion" else 0.0
    dx, dy = DIRECTIONS[spec.direction] if spec.direction else (0, 0)
    lo, hi = r + 1, size - r - 1
    # start so that the whole path stays inside the frame
    x0 = float(rng.uniform(lo - min(0, dx) * travel, hi - max(0, dx) * travel))
    y0 = float(rng.uniform(lo - min(0, dy) * travel, hi - max(0, dy) * travel))
    switch = int(rng.integers(frames // 3, 2 * frames // 3 + 1)) if spec.kind == "change" else frames
    video = np.empty((frames, 3, size, size), np.float32)
    path = []
    for t in range(frames):
        f = t / max(frames - 1, 1)
        cx, cy = x0 + dx * travel * f, y0 + dy * travel * f
        img = _canvas(size)
        _paint(img, shape_mask(shape, cx, cy, r, size), color if t < switch else spec.color_to)
        video[t] = img
        path.append((cx, cy))
    truth = {"prompt": spec.text, "kind": spec.kind, "color": color, "shape": shape, "r": r, "path": path}
    if spec.kind == "change":
        truth.update(color_to=spec.color_to, switch_frame=switch)
    return video, truth


# ---------------------------------------------------------------------------------------------
# audio


def midi_to_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def synth_wave(timbre: str, f0: float, n: int, sample_rate: int) -> np.ndarray:
    """Band-limited ``timbre`` wave at ``f0`` Hz (additive synthesis up to Nyquist), peak about 1."""
    t = np.arange(n) / sample_rate
    if timbre == "sine":
        harmonics = [(1, 1.0)]
    elif timbre == "square":
        harmonics = [(k, 1.0 / k) for k in range(1, 40, 2)]
    elif timbre == "sawtooth":
        harmonics = [(k, 1.0 / k) for k in range(1, 40)]
    else:
        raise InputError(f"unknown timbre {timbre!r}")
    wave = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in harmonics if k * f0 < sample_rate / 2 - 200)
    return (wave / np.abs(wave).max()).astype(np.float32)


def render_audio_spec(
    spec: Spec, rng: np.random.Generator, sample_rate: int = 16000, duration: float = 1.0
) -> tuple[np.ndarray, dict[str, Any]]:
    """One mono clip ``[1, N]`` float32 for ``spec``: notes of a pentatonic melody with gaps between them."""
    n_total = int(round(sample_rate * duration))
    rate = TEMPOS[spec.tempo] * float(rng.uniform(0.9, 1.1))
    note_len = 1.0 / rate
    lo, hi = REGISTERS[spec.register]
    scale = [m for m in range(lo, hi + 1) if m % 12 in (0, 2, 4, 7, 9)]
    out = np.zeros(n_total, np.float32)
    notes = []
    start = float(rng.uniform(0.0, 0.05))
    while start + 0.6 * note_len <= duration:
        pitch = int(rng.choice(scale))
        a = int(start * sample_rate)
        n = min(int(0.75 * note_len * sample_rate), n_total - a)  # 25% gap of silence before the next note
        env = np.minimum(1.0, np.arange(n) / (0.005 * sample_rate))  # 5 ms attack
        env *= np.minimum(1.0, (n - np.arange(n)) / (0.01 * sample_rate))  # 10 ms release
        env *= np.exp(-np.arange(n) / (0.6 * sample_rate))
        out[a : a + n] += 0.5 * env * synth_wave(spec.timbre, midi_to_hz(pitch), n, sample_rate)
        notes.append({"midi": pitch, "start": a / sample_rate, "duration": n / sample_rate})
        start += note_len
    truth = {"prompt": spec.text, "kind": "melody", "tempo": spec.tempo, "register": spec.register}
    truth.update(timbre=spec.timbre, notes=notes, rate=rate)
    return out[None], truth


# ---------------------------------------------------------------------------------------------


def render(
    prompts: Sequence[str],
    seed: int = 0,
    modality: str | None = None,
    size: int = 32,
    frames: int = 8,
    fps: float = 8.0,
    sample_rate: int = 16000,
    duration: float = 1.0,
) -> Media:
    """Render ``prompts`` of one modality; ``metadata`` holds each item's ground truth."""
    if not prompts:
        raise InputError("render: no prompts given")
    specs = [parse_prompt(p, modality) for p in prompts]
    mods = {s.modality for s in specs}
    if len(mods) != 1:
        raise InputError(f"render: prompts mix modalities {sorted(mods)}; render each modality separately")
    mod = mods.pop()
    items, truths = [], []
    for i, spec in enumerate(specs):
        rng = np.random.default_rng([seed, i])
        if mod == "image":
            x, truth = render_image_spec(spec, rng, size)
        elif mod == "video":
            x, truth = render_video_spec(spec, rng, size, frames)
        else:
            x, truth = render_audio_spec(spec, rng, sample_rate, duration)
        items.append(x)
        truths.append(truth)
    data = torch.from_numpy(np.stack(items))
    prompts = list(prompts)
    if mod == "image":
        return ImageBatch(data, prompts=prompts, metadata=truths)
    if mod == "video":
        return VideoBatch(data, fps=fps, prompts=prompts, metadata=truths)
    return AudioBatch(data, sample_rate=sample_rate, prompts=prompts, metadata=truths)
