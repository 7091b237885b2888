"""The prompt files of the synthetic-world benchmark suites (``assets/suites/synth-{image,video}``).

``python -m mmalign.synth.suites`` rewrites both ``prompts.json`` files (VBench's ``full_info``
layout) from the prompt grammar; a test checks that the shipped files equal what it writes.
"""

from __future__ import annotations

import json
from typing import Any

from mmalign.errors import InputError
from mmalign.fileio import atomic_write_text
from mmalign.paths import asset_path
from mmalign.synth.prompts import COLORS, DIRECTIONS, SHAPES, all_prompts, parse_prompt


def build_synth_entries(modality: str) -> list[dict[str, Any]]:
    """Prompt entries of the synth suites, in the full_info layout, from :mod:`mmalign.synth.prompts`."""
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
        by_kind: dict[str, list[str]] = {}
        for p in prompts:
            by_kind.setdefault(parse_prompt(p).kind, []).append(p)
        task = {"single": ["single_object", "colors"], "count": ["counting"], "spatial": ["two_object", "position"]}
        for kind, ps in by_kind.items():
            for p in ps[:: max(1, len(ps) // 8)][:8]:
                out.append({"prompt_en": p, "dimension": [*task[kind], "faithfulness", "hps"]})
        return out
    raise InputError(f"no synth suite for modality {modality!r}")


def suite_prompts_text(modality: str) -> str:
    """The text of ``assets/suites/synth-<modality>/prompts.json``."""
    return json.dumps(build_synth_entries(modality), indent=1) + "\n"


def main() -> None:
    for modality in ("image", "video"):
        path = atomic_write_text(asset_path("suites", f"synth-{modality}", "prompts.json"), suite_prompts_text(modality))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
