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
"""

from __future__ import annotations

import json
import os
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
    """Load a suite by name (``vbench-standard``, ``synth-video``, ``synth-image``), folder or ``suite.yaml`` path."""
    from mmalign.bench.dimensions import DIMENSIONS

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
