"""Benchmark suites: prompts per dimension + sampling settings + naming scheme + backbones.

A suite lives in ``assets/suites/<name>/suite.yaml`` and points at a prompt file in VBench's
``full_info`` layout (a list of ``{"prompt_en", "dimension": [...], "auxiliary_info": {dim: {...}}}``).

* ``vbench-standard`` — VBench's 946 entries (944 unique prompts; reference §1.3), shipped with
  its Apache-2.0 license. Files are ``{prompt}-{i}{postfix}`` with i = 0..4 (25 for
  temporal_flickering, whose static filter keeps the first 5 static ones); the postfix (``.mp4``)
  is taken from the first file of the folder, as VBench does; missing files are reported, not fatal.
* ``synth-video`` — prompts of :mod:`mmalign.synth.prompts` for motion / static / change / colour /
  shape dimensions; semantic dimensions answered by the exact oracle, so it runs on CPU.
* ``synth-image`` — GenEval-style tasks and an HPSv2-style preference score on synthetic images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmalign.errors import ConfigError, InputError
from mmalign.paths import asset_path

SUITE_KEYS = {"name", "description", "modality", "prompts", "naming", "samples_per_prompt", "samples_per_dimension",
              "dimensions", "backbones", "generation", "license"}
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Entry:
    prompt: str
    dimensions: tuple[str, ...]
    aux: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Item:
    """One media file to evaluate: its prompt, index, the dimensions it serves and their aux info."""

    path: str
    prompt: str
    index: int
    dimensions: tuple[str, ...]
    aux: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Suite:
    name: str
    modality: str
    entries: list[Entry]
    dimensions: list[str]
    backbones: dict[str, list[str]]
    naming: str = "{prompt}-{index}"
    samples_per_prompt: int = 5
    samples_per_dimension: dict[str, int] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    root: Path | None = None

    def samples_for(self, entry: Entry) -> int:
        return max([self.samples_per_dimension.get(d, self.samples_per_prompt) for d in entry.dimensions])

    def prompts(self) -> list[str]:
        """Unique prompts in file order (duplicated entries serve several dimensions with one set of files)."""
        return list(dict.fromkeys(e.prompt for e in self.entries))

    def merged(self) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for e in self.entries:
            if e.prompt in out:
                old = out[e.prompt]
                out[e.prompt] = Entry(e.prompt, tuple(dict.fromkeys(old.dimensions + e.dimensions)), {**old.aux, **e.aux})
            else:
                out[e.prompt] = e
        return out

    def filename(self, prompt: str, index: int, postfix: str) -> str:
        return self.naming.format(prompt=prompt, index=index) + postfix

    def items(self, folder: str | os.PathLike, dimensions: list[str] | None = None) -> tuple[list[Item], list[str]]:
        """Items found in ``folder`` in this suite's naming scheme, and the expected files that are missing."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"videos folder {folder} does not exist; pass --videos DIR with the sampled files")
        exts = IMAGE_EXTS if self.modality == "image" else VIDEO_EXTS
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise InputError(f"no {self.modality} files ({', '.join(exts)}) in {folder}")
        postfix = Path(files[0]).suffix  # VBench: the postfix of the first file in the folder
        wanted = set(dimensions or self.dimensions)
        items, missing = [], []
        for entry in self.merged().values():
            dims = tuple(d for d in entry.dimensions if d in wanted)
            if not dims:
                continue
            for i in range(self.samples_for(entry)):
                name = self.filename(entry.prompt, i, postfix)
                if (folder / name).is_file():
                    items.append(Item(str(folder / name), entry.prompt, i, dims, entry.aux))
                else:
                    missing.append(name)
        return items, missing


def _read_entries(path: Path) -> list[Entry]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read prompt file {path}: {err}") from err
    entries = []
    for i, e in enumerate(raw):
        if "prompt_en" not in e or "dimension" not in e:
            raise ConfigError(f"{path}[{i}]: needs 'prompt_en' and 'dimension' (VBench full_info layout)")
        entries.append(Entry(e["prompt_en"], tuple(e["dimension"]), dict(e.get("auxiliary_info", {}))))
    return entries


def _suite_files() -> dict[str, Path]:
    root = asset_path("suites")
    out = {}
    for f in sorted(root.glob("*/suite.yaml")) if root.is_dir() else []:
        out[(yaml.safe_load(f.read_text()) or {}).get("name", f.parent.name)] = f
    return out


def list_suites() -> list[str]:
    return sorted(_suite_files())


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """Load a suite by name (``vbench-standard``, ``synth-video``, ``synth-image``) or from a suite.yaml path."""
    p = Path(name_or_path)
    if not p.exists():
        files = _suite_files()
        p = files.get(str(name_or_path), Path("/nonexistent"))
        if not p.is_file():
            import difflib

            near = difflib.get_close_matches(str(name_or_path), list_suites(), n=3)
            raise ConfigError(f"unknown suite {name_or_path!r}; nearest: {near}; available: {list_suites()}")
    if p.is_dir():
        p = p / "suite.yaml"
    cfg = yaml.safe_load(p.read_text()) or {}
    unknown = set(cfg) - SUITE_KEYS
    if unknown:
        import difflib

        bad = min(unknown)
        raise ConfigError(f"{p}: unknown key {bad!r}; nearest: {difflib.get_close_matches(bad, SUITE_KEYS, n=1)}")
    from mmalign.bench.dimensions import DIMENSIONS

    dims = list(cfg.get("dimensions", []))
    for d in dims:
        if d not in DIMENSIONS:
            raise ConfigError(f"{p}: dimensions: unknown dimension {d!r}; known: {sorted(DIMENSIONS)}")
    entries = _read_entries(p.parent / cfg["prompts"])
    return Suite(
        name=cfg["name"], modality=cfg.get("modality", "video"), entries=entries, dimensions=dims,
        backbones={k: list(v) for k, v in cfg.get("backbones", {}).items()}, naming=cfg.get("naming", "{prompt}-{index}"),
        samples_per_prompt=int(cfg.get("samples_per_prompt", 5)),
        samples_per_dimension=dict(cfg.get("samples_per_dimension", {})), generation=dict(cfg.get("generation", {})),
        description=cfg.get("description", ""), root=p.parent,
    )


# ---------------------------------------------------------------------------------------------
# synthetic suites (regenerate the shipped prompt files with `build_synth_entries`)


def build_synth_entries(modality: str) -> list[dict[str, Any]]:
    """Prompt entries of the synth suites, in the full_info layout, from :mod:`mmalign.synth.prompts`."""
    from mmalign.synth.prompts import COLORS, DIRECTIONS, SHAPES, all_prompts

    out: list[dict[str, Any]] = []
    if modality == "video":
        colors, shapes = list(COLORS)[:3], list(SHAPES)
        for c, s, d in zip(colors * 4, shapes * 4, list(DIRECTIONS) * 3):
            out.append({"prompt_en": f"a {c} {s} moving {d}", "dimension": [
                "subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
                "motion_direction", "faithfulness"]})
        for c, s in zip(list(COLORS), shapes * 2):
            out.append({"prompt_en": f"a static {c} {s}", "dimension": [
                "temporal_flickering", "static_scene", "aesthetic_quality", "imaging_quality", "faithfulness"]})
        for c1, c2, s in [("red", "blue", "circle"), ("green", "yellow", "square"), ("blue", "purple", "triangle")]:
            out.append({"prompt_en": f"a {c1} {s} turning {c2}", "dimension": ["color_change", "faithfulness", "overall_consistency"]})
        for c, s in zip(list(COLORS), shapes * 2):
            out.append({"prompt_en": f"a {c} {s}", "dimension": ["object_class", "color"], "auxiliary_info": {
                "object_class": {"object": s}, "color": {"color": c}}})
        return out
    if modality == "image":
        prompts = all_prompts("image")
        from mmalign.synth.prompts import parse_prompt

        by_kind: dict[str, list[str]] = {}
        for p in prompts:
            by_kind.setdefault(parse_prompt(p).kind, []).append(p)
        task = {"single": ["single_object", "colors"], "count": ["counting"], "spatial": ["two_object", "position"]}
        for kind, ps in by_kind.items():
            for p in ps[:: max(1, len(ps) // 8)][:8]:
                out.append({"prompt_en": p, "dimension": [*task[kind], "faithfulness", "hps"]})
        return out
    raise InputError(f"no synth suite for modality {modality!r}")
