"""Human alignment of benchmark dimensions on the synthetic world.

VBench validates each dimension against human pairwise votes (Huang et al., CVPR 2024, §4 "Human
alignment": for pairs of videos of one prompt, how often the dimension prefers the video people
preferred). Here the people are the simulated annotators of :mod:`mmalign.synth.annotators`, whose
hidden utility (oracle faithfulness + quality + noise) is known, so the numbers are reproducible.

Pairs: for each prompt, two renders with random, seeded degradations (pixel noise, flicker, blur,
wrong colour, frozen motion, shuffled frames, none). Agreement of a dimension = fraction of pairs,
among those where the annotator did not tie and the dimension's two per-video values differ, on
which the dimension prefers the annotator's choice. The annotator-vs-annotator agreement on the
same pairs is reported as the ceiling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmalign.bench.runner import run_benchmark
from mmalign.bench.suites import Entry, Suite, load_suite
from mmalign.fileio import atomic_write_json
from mmalign.media import VideoBatch, load_video, save_media
from mmalign.synth.annotators import Annotator, agreement
from mmalign.synth.prompts import parse_prompt, sample_prompts
from mmalign.synth.render import render

DEGRADATIONS = ("none", "noise", "flicker", "blur", "wrong_color", "freeze", "shuffle")


def degrade(video: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """A degraded copy of ``video`` ``[T, 3, H, W]`` in [0, 1] (seeded by ``rng``)."""
    v = video.clone()
    strength = float(rng.uniform(0.3, 1.0))
    if kind == "noise":
        v = v + torch.from_numpy(rng.normal(0, 0.12 * strength, v.shape)).float()
    elif kind == "flicker":
        v = v * torch.from_numpy(1 + rng.uniform(-0.5, 0.5, (v.shape[0], 1, 1, 1)) * strength).float()
    elif kind == "blur":
        k = torch.tensor([1.0, 2.0, 1.0])
        k2 = (k[:, None] * k[None]) / 16
        v = torch.nn.functional.conv2d(torch.nn.functional.pad(v, [1, 1, 1, 1], mode="replicate"),
                                       k2.expand(3, 1, 3, 3).contiguous(), groups=3)
    elif kind == "wrong_color":
        v = v[:, [2, 0, 1]]
    elif kind == "freeze":
        v = v[:1].expand_as(v).clone()
    elif kind == "shuffle":
        v = v[torch.from_numpy(rng.permutation(v.shape[0]))]
    return v.clamp(0, 1)


def _aux(prompt: str) -> dict[str, Any]:
    spec = parse_prompt(prompt, "video")
    color, shape = spec.objects[0]
    return {"object_class": {"object": shape}, "color": {"color": color}}


def human_alignment(
    out: str | os.PathLike,
    n_prompts: int = 24,
    seed: int = 0,
    annotator_seeds: tuple[int, ...] = (0, 1, 2),
    dimensions: list[str] | None = None,
    suite: str = "synth-video",
    progress: bool = True,
) -> dict[str, Any]:
    """Per-dimension agreement with simulated annotators on degraded synthetic video pairs, written to
    ``OUT/alignment.json`` (the rendered pairs and the benchmark run stay in ``OUT/videos`` and ``OUT/run``)."""
    base = load_suite(suite)
    dims = list(dimensions or base.dimensions)
    out = Path(out)
    prompts = list(dict.fromkeys(sample_prompts("video", n_prompts * 3, seed=seed, split=None)))[:n_prompts]
    rng = np.random.default_rng(seed)
    clean = render(prompts * 2, seed=seed, modality="video")
    kinds = [str(rng.choice(DEGRADATIONS)) for _ in range(2 * len(prompts))]
    pixels = torch.stack([degrade(clean.pixels[i], kinds[i], rng) for i in range(len(kinds))])
    videos = VideoBatch(pixels, fps=clean.fps)
    names = [f"{p}-{i}" for i in range(2) for p in prompts]
    save_media(videos, out / "videos", names)
    pair_suite = Suite(name=f"{suite}-alignment", modality="video",
                       entries=[Entry(p, tuple(dims), _aux(p)) for p in prompts], dimensions=dims,
                       backbones=base.backbones, samples_per_prompt=2)
    run = run_benchmark(pair_suite, out / "videos", out / "run", dims, progress=progress)
    by_file = {Path(r["path"]).name: r for r in run.records}
    decoded = VideoBatch(torch.cat([load_video(out / "videos" / f"{n}.mp4").pixels for n in names]), fps=clean.fps)
    a, b = decoded[: len(prompts)], decoded[len(prompts):]
    labels = {s: Annotator(seed=s).choose(a, b, prompts) for s in annotator_seeds}
    result: dict[str, Any] = {"n_pairs": len(prompts), "degradations": kinds, "dimensions": {}}
    ceiling = [agreement(labels[s], labels[t]) for s in annotator_seeds for t in annotator_seeds if s < t]
    result["annotator_agreement"] = float(np.nanmean(ceiling)) if ceiling else None
    for d in dims:
        agree = total = undecided = 0
        for i, p in enumerate(prompts):
            ra = by_file.get(f"{p}-0.mp4", {}).get("dims", {}).get(d)
            rb = by_file.get(f"{p}-1.mp4", {}).get("dims", {}).get(d)
            if ra is None or rb is None:
                continue
            va, vb = float(ra["video_results"]), float(rb["video_results"])
            for lab in labels.values():
                if float(lab[i]) == 0.5:
                    continue
                if va == vb:
                    undecided += 1
                    continue
                total += 1
                agree += (va > vb) == (float(lab[i]) == 1.0)
        result["dimensions"][d] = {"agreement": agree / total if total else None, "judgments": total,
                                   "undecided": undecided, "unavailable": run.unavailable.get(d)}
    atomic_write_json(out / "alignment.json", result)
    return result
