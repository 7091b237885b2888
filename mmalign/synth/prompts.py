"""The prompt grammar of the synthetic world, with skills and seeded train / held-out splits.

Images: ``"a red circle"`` (color, shape), ``"two blue squares"`` (color, shape, count),
``"a red circle left of a green triangle"`` (color, shape, spatial).
Videos: ``"a red circle moving left"`` (color, shape, motion), ``"a static blue square"``
(color, shape, static), ``"a red square turning blue"`` (shape, change).
Audio: ``"a fast high melody on a square synth"`` (tempo, register, timbre).

Every prompt parses back into a :class:`Spec`, its structured meaning, which the renderer draws and
the oracle checks. The split is a fixed function of the prompt text (a stable hash), so held-out
prompts are never seen in training, whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from mmalign.errors import InputError

#: Palette (linear RGB in [0, 1]); the background is near-black.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.71, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.90, 0.82, 0.16),
    "purple": (0.62, 0.24, 0.78),
}
BACKGROUND: tuple[float, float, float] = (0.08, 0.08, 0.08)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: relation -> (dx sign, dy sign) of the first object relative to the second (image y grows downwards)
RELATIONS: dict[str, tuple[int, int]] = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TEMPOS: dict[str, float] = {"slow": 2.5, "fast": 7.0}  # notes per second
REGISTERS: dict[str, tuple[int, int]] = {"low": (45, 55), "mid": (58, 66), "high": (70, 79)}  # MIDI ranges
TIMBRES: tuple[str, ...] = ("sine", "square", "sawtooth")

SKILLS: dict[str, tuple[str, ...]] = {
    "image": ("color", "shape", "count", "spatial"),
    "video": ("color", "shape", "motion", "static", "change"),
    "audio": ("register", "tempo", "timbre"),
}
MODALITIES = tuple(SKILLS)
SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Spec:
    """The structured meaning of a prompt."""

    modality: str
    kind: str  # single | count | spatial | motion | static | change | melody
    objects: tuple[tuple[str, str], ...] = ()  # (color, shape) per object
    relation: str | None = None  # spatial: relation of objects[0] to objects[1]
    direction: str | None = None  # motion
    color_to: str | None = None  # change
    tempo: str | None = None
    register: str | None = None
    timbre: str | None = None
    skills: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        return format_prompt(self)


def _plural(shape: str) -> str:
    return shape + "s"


def format_prompt(spec: Spec) -> str:
    """The canonical text of a spec (inverse of :func:`parse_prompt`)."""
    if spec.kind == "melody":
        return f"a {spec.tempo} {spec.register} melody on a {spec.timbre} synth"
    (c, s) = spec.objects[0]
    if spec.kind == "single":
        return f"a {c} {s}"
    if spec.kind == "count":
        return f"two {c} {_plural(s)}"
    if spec.kind == "spatial":
        (c2, s2) = spec.objects[1]
        return f"a {c} {s} {spec.relation} a {c2} {s2}"
    if spec.kind == "motion":
        return f"a {c} {s} moving {spec.direction}"
    if spec.kind == "static":
        return f"a static {c} {s}"
    if spec.kind == "change":
        return f"a {c} {s} turning {spec.color_to}"
    raise InputError(f"unknown prompt kind {spec.kind!r}")


_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_R = "|".join(RELATIONS)
_PATTERNS: list[tuple[str, str, re.Pattern[str]]] = [
    ("image", "spatial", re.compile(rf"an? ({_C}) ({_S}) ({_R}) an? ({_C}) ({_S})")),
    ("image", "count", re.compile(rf"two ({_C}) ({_S})s")),
    ("video", "motion", re.compile(rf"an? ({_C}) ({_S}) moving ({'|'.join(DIRECTIONS)})")),
    ("video", "static", re.compile(rf"an? static ({_C}) ({_S})")),
    ("video", "change", re.compile(rf"an? ({_C}) ({_S}) turning ({_C})")),
    ("image", "single", re.compile(rf"an? ({_C}) ({_S})")),
    (
        "audio",
        "melody",
        re.compile(rf"an? ({'|'.join(TEMPOS)}) ({'|'.join(REGISTERS)}) melody on an? ({'|'.join(TIMBRES)}) synth"),
    ),
]


def parse_prompt(text: str, modality: str | None = None) -> Spec:
    """Parse a prompt of the grammar into its :class:`Spec`.

    ``"a red circle"`` is an image prompt, and also a valid video prompt (a still scene) when
    ``modality="video"`` is given; it then checks color and shape only.
    """
    t = " ".join(text.lower().strip().rstrip(".").split())
    for mod, kind, pattern in _PATTERNS:
        m = pattern.fullmatch(t)
        if not m:
            continue
        g = m.groups()
        if kind == "single":
            spec = Spec(mod, kind, ((g[0], g[1]),), skills=("color", "shape"))
        elif kind == "count":
            spec = Spec(mod, kind, ((g[0], g[1]),), skills=("color", "shape", "count"))
        elif kind == "spatial":
            spec = Spec(mod, kind, ((g[0], g[1]), (g[3], g[4])), relation=g[2], skills=("color", "shape", "spatial"))
        elif kind == "motion":
            spec = Spec(mod, kind, ((g[0], g[1]),), direction=g[2], skills=("color", "shape", "motion"))
        elif kind == "static":
            spec = Spec(mod, kind, ((g[0], g[1]),), skills=("color", "shape", "static"))
        elif kind == "change":
            spec = Spec(mod, kind, ((g[0], g[1]),), color_to=g[2], skills=("shape", "change"))
        else:
            spec = Spec(mod, kind, tempo=g[0], register=g[1], timbre=g[2], skills=("tempo", "register", "timbre"))
        if modality is not None and modality != spec.modality:
            if modality == "video" and spec.modality == "image" and kind == "single":
                return Spec("video", "single", spec.objects, skills=spec.skills)
            raise InputError(f"prompt {text!r} is a {spec.modality} prompt of the synthetic world, not {modality}")
        return spec
    raise InputError(
        f"prompt {text!r} is not in the synthetic world's grammar; examples: 'a red circle', "
        "'a blue square left of a yellow triangle', 'two green circles', 'a red circle moving left', "
        "'a fast high melody on a square synth'"
    )


def all_prompts(modality: str) -> list[str]:
    """Every prompt of the grammar for ``modality``, in a fixed order."""
    if modality == "image":
        out = [f"a {c} {s}" for c in COLORS for s in SHAPES]
        out += [f"two {c} {_plural(s)}" for c in COLORS for s in SHAPES]
        out += [
            f"a {c1} {s1} {r} a {c2} {s2}"
            for c1 in COLORS
            for s1 in SHAPES
            for r in RELATIONS
            for c2 in COLORS
            for s2 in SHAPES
            if c2 != c1
        ]
        return out
    if modality == "video":
        out = [f"a {c} {s} moving {d}" for c in COLORS for s in SHAPES for d in DIRECTIONS]
        out += [f"a static {c} {s}" for c in COLORS for s in SHAPES]
        out += [f"a {c1} {s} turning {c2}" for c1 in COLORS for s in SHAPES for c2 in COLORS if c2 != c1]
        return out
    if modality == "audio":
        return [f"a {t} {r} melody on a {b} synth" for t in TEMPOS for r in REGISTERS for b in TIMBRES]
    raise InputError(f"unknown modality {modality!r}; choose one of {MODALITIES}")


def split_of(text: str) -> str:
    """``"heldout"`` for a fixed ~20% of the grammar's prompts (by a stable hash), else ``"train"``."""
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return "heldout" if (h % 1000) < HELDOUT_FRACTION * 1000 else "train"


#: Mix of prompt kinds when sampling (kinds with few distinct prompts are not swamped).
_KIND_WEIGHTS = {
    "image": {"single": 0.35, "count": 0.2, "spatial": 0.45},
    "video": {"motion": 0.45, "static": 0.2, "change": 0.35},
    "audio": {"melody": 1.0},
}


def sample_prompts(modality: str, n: int, seed: int = 0, split: str | None = "train") -> list[str]:
    """``n`` prompts of ``modality`` drawn with replacement from ``split`` (``None`` = all), seeded."""
    if split not in (*SPLITS, None):
        raise InputError(f"unknown split {split!r}; choose one of {SPLITS} or None")
    pool: dict[str, list[str]] = {}
    for p in all_prompts(modality):
        if split is None or split_of(p) == split:
            pool.setdefault(parse_prompt(p, modality).kind, []).append(p)
    rng = random.Random(seed)
    kinds = [k for k in _KIND_WEIGHTS[modality] if k in pool]
    weights = [_KIND_WEIGHTS[modality][k] for k in kinds]
    return [rng.choice(pool[rng.choices(kinds, weights)[0]]) for _ in range(n)]


def _vocabulary() -> tuple[str, ...]:
    words: set[str] = set()
    for m in MODALITIES:
        for p in all_prompts(m):
            words.update(p.split())
    return tuple(sorted(words))


#: Every word of the grammar (for tokenizers).
VOCABULARY: tuple[str, ...] = _vocabulary()
