"""Benchmark suites: prompts per dimension + sampling settings + naming scheme + backbones.

A suite is a :class:`SuiteCard` in ``assets/suites/<name>/suite.yaml`` (or any folder holding a
``suite.yaml``), loaded by the one card loader, and a prompt file in VBench's ``full_info`` layout (a
list of ``{"prompt_en", "dimension": [...], "auxiliary_info": {dim: {...}}}``). A suite may name a
``plugin`` module that registers the backbones it uses (how the synthetic world plugs in).

* ``vbench-standard`` — VBench's 946 entries (944 unique prompts; Vchitect/VBench
  ``vbench/VBench_full_info.json`` @ 45e79ec), shipped with its Apache-2.0 license. Files are ``{prompt}-{i}{postfix}`` with i = 0..4 (25 for
  temporal_flickering, whose static filter keeps the first 5 static ones); the postfix (``.mp4``)
  is taken from the first file of the folder, as VBench does; missing files are reported, not fatal.
* ``synth-video`` — synthetic-world prompts for motion / static / change / colour / shape
  dimensions; semantic dimensions answered by the exact oracle, so it runs on CPU.
* ``synth-image`` — GenEval-style tasks and an HPSv2-style preference score on synthetic images.
* ``custom`` (:func:`custom_suite`) — VBench's ``custom_input`` mode: any videos of a folder, any names,
  on the dimensions that need no auxiliary info, with VBench's backbones.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mmalign.cards import Card, list_cards, load_card
from mmalign.errors import ConfigError, InputError
from mmalign.media import IMAGE_EXTS, VIDEO_EXTS
from mmalign.registry import import_plugin


class SuiteCard(Card):
    """``suite.yaml``: what a suite measures and how its files are named."""

    name: str = Field(description="Suite name (the folder name of a shipped suite)")
    description: str = Field("", description="One line shown in reports")
    modality: Literal["image", "video"] = Field("video", description="What the suite's files hold")
    prompts: str = Field(description="Prompt file next to suite.yaml, in VBench's full_info layout")
    naming: str = Field("{prompt}-{index}", description="File name of sample i of a prompt (VBench: '{prompt}-{index}')")
    samples_per_prompt: int = Field(5, gt=0, description="Files per prompt")
    samples_per_dimension: dict[str, int] = Field(default_factory=dict, description="Files per prompt of entries of these dimensions")
    dimensions: list[str] = Field(description="Dimensions measured (registered names)")
    backbones: dict[str, list[str]] = Field(default_factory=dict, description="role -> backbones in order of preference; the first that loads is used")
    generation: dict[str, Any] = Field(default_factory=dict, description="Sampling settings a generator should use (informational)")
    license: str | None = Field(None, description="License of the prompt file")
    plugin: str | None = Field(None, description="Module imported before the suite's backbones are looked up (it registers them)")

    @model_validator(mode="after")
    def _check(self) -> "SuiteCard":
        if "{prompt}" not in self.naming or "{index}" not in self.naming:
            raise ConfigError(f"naming {self.naming!r} must contain {{prompt}} and {{index}}")
        return self


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


#: VBench ``custom_input`` dimensions that need no prompt (Vchitect/VBench@45e79ec ``vbench/__init__.py``, README)
PROMPT_FREE = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
               "dynamic_degree", "aesthetic_quality", "imaging_quality")
#: custom_input dimensions that need a prompt per video (human_action parses its label from the file name)
PROMPT_DIMS = ("temporal_style", "overall_consistency", "human_action")


def prompt_from_filename(path: str | os.PathLike) -> str:
    """VBench ``utils.py::get_prompt_from_filename``: the file stem without a trailing ``-<digits>``."""
    return re.sub(r"-\d+$", "", Path(path).stem)


def _read_prompt_table(path: Path) -> dict[str, str]:
    """``{file name: prompt}`` from VBench's ``--prompt_file`` JSON (``{video_path: prompt}``) or a
    ``manifest.jsonl`` (``{"file": ..., "prompt": ...}`` per line, as ``mmalign sample`` writes)."""
    from mmalign.media import read_media_manifest

    if not path.is_file():
        raise InputError(f"{path}: no such prompts file; give a JSON {{video_path: prompt}} or a manifest.jsonl")
    if path.suffix == ".jsonl":
        return read_media_manifest(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}); expected {{video_path: prompt}}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InputError(f"{path}: expected a JSON object {{video_path: prompt}} (VBench's --prompt_file)")
    return {Path(k).name: v for k, v in raw.items()}


@dataclass
class CustomSuite(Suite):
    """VBench's ``custom_input`` mode: every video of the folder (any names, sizes, frame rates, lengths).

    Prompts come from ``prompts_file`` (or the folder's ``manifest.jsonl``), else from the file
    name (:func:`prompt_from_filename`), as VBench does. The prompt dimensions run only when asked for.
    """

    prompts_file: Path | None = None

    def items(self, folder: str | os.PathLike, dimensions: list[str] | None = None) -> tuple[list[Item], list[str]]:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"videos folder {folder} does not exist; pass --videos DIR")
        dims = tuple(dimensions or self.dimensions)
        bad = [d for d in dims if d not in PROMPT_FREE + PROMPT_DIMS]
        if bad:
            raise ConfigError(f"--suite custom cannot measure {bad}: they need VBench's auxiliary info (objects, colours, "
                              f"scenes, styles); use --suite vbench-standard with its file names. Custom dimensions: "
                              f"{', '.join(PROMPT_FREE + PROMPT_DIMS)}")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
        if not files:
            raise InputError(f"no video files ({', '.join(VIDEO_EXTS)}) in {folder}")
        table_path = self.prompts_file or (folder / "manifest.jsonl" if (folder / "manifest.jsonl").is_file() else None)
        table = _read_prompt_table(table_path) if table_path else {}
        from mmalign.bench.dimensions import index_from_filename

        items = [Item(str(f), table.get(f.name, prompt_from_filename(f)), index_from_filename(str(f)), dims) for f in files]
        return items, []


def custom_suite(prompts_file: str | os.PathLike | None = None) -> CustomSuite:
    """The ``custom`` suite: VBench's prompt-free dimensions (and, on request, the prompt ones) on any
    videos, with the backbones of ``vbench-standard``."""
    std = load_suite("vbench-standard")
    return CustomSuite(name="custom", modality="video", entries=[], dimensions=list(PROMPT_FREE), backbones=std.backbones,
                       naming="{prompt}-{index}", samples_per_prompt=1, description="VBench custom_input: any videos",
                       prompts_file=Path(prompts_file) if prompts_file else None)


def _read_entries(path: Path) -> list[Entry]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the suite's prompt file ({err})") from err
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of entries (VBench full_info layout)")
    entries = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or "prompt_en" not in e or "dimension" not in e:
            raise ConfigError(f"{path}[{i}]: needs 'prompt_en' and 'dimension' (VBench full_info layout)")
        entries.append(Entry(e["prompt_en"], tuple(e["dimension"]), dict(e.get("auxiliary_info", {}))))
    return entries


def list_suites() -> list[str]:
    """Names of the shipped suites (folders of ``assets/suites`` holding a ``suite.yaml``)."""
    return list_cards("suites")


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """Load a suite by name (``vbench-standard``, ``synth-video``, ``synth-image``, ``custom``), folder or ``suite.yaml`` path."""
    from mmalign.bench.dimensions import DIMENSIONS

    if str(name_or_path) == "custom":
        return custom_suite()
    card = load_card(name_or_path, SuiteCard, kind="suites")
    where = str(card.source)
    if card.plugin is not None:
        import_plugin(card.plugin, where)
    for d in card.dimensions:
        if d not in DIMENSIONS:
            raise ConfigError(f"{where}: dimensions: unknown dimension {d!r}; known: {', '.join(DIMENSIONS.names())}")
    root = card.source.parent
    return Suite(
        name=card.name, modality=card.modality, entries=_read_entries(root / card.prompts), dimensions=list(card.dimensions),
        backbones={k: list(v) for k, v in card.backbones.items()}, naming=card.naming,
        samples_per_prompt=card.samples_per_prompt, samples_per_dimension=dict(card.samples_per_dimension),
        generation=dict(card.generation), description=card.description, root=root,
    )
