"""VBench's static filter as its own step (Vchitect/VBench@45e79ec ``vbench/cli/static_filter.py``).

temporal_flickering is meant for static videos; VBench samples 25 videos per temporal_flickering
prompt and keeps the first 5 static ones (in sorted file order) as ``{prompt}-{i}.mp4``, i = 0..4,
before the dimension runs. A video is static iff, with RAFT flow on all its frames,
#(consecutive pairs whose top-2% flow magnitude > 3·min(H,W)/256) ≤ round(2·F/16) and both
wrap-around pairs (first → last, last → first) stay ≤ thres·count_num·2 (:func:`formulas.is_static`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmalign.bench import formulas as fm
from mmalign.bench.backbones import FlowBackbone, LoadContext, default_weights_dir
from mmalign.bench.runner import decode, resolve_backbones
from mmalign.bench.suites import prompt_from_filename
from mmalign.devices import resolve_device
from mmalign.errors import InputError
from mmalign.fileio import atomic_write_json
from mmalign.media import VIDEO_EXTS

log = logging.getLogger(__name__)

#: flow backbones in order of preference (VBench's raft-things first; later ones are labelled substitutes)
FLOW_BACKBONES = ["raft-things", "raft-large", "raft-small", "horn-schunck"]


def video_is_static(frames: torch.Tensor, flow: FlowBackbone) -> fm.StaticDecision:
    """The static decision for uint8 frames ``[F, 3, H, W]`` (consecutive pairs, then the two wrap-arounds)."""
    n = frames.shape[0]
    first, last = [0, n - 1], [n - 1, 0]
    a = torch.cat([frames[:-1], frames[first]])  # pairs (t, t+1), then (0, F-1), (F-1, 0)
    b = torch.cat([frames[1:], frames[last]])
    scores = [fm.top_fraction_mean(m, 0.02) for m in flow.magnitudes(a, b)]
    return fm.is_static(scores[:-2], scores[-2:], frames.shape[-2], frames.shape[-1], n)


def static_filter(videos: str | os.PathLike, out: str | os.PathLike, *, keep: int | None = 5,
                  prompts: list[str] | None = None, weights_dir: str | os.PathLike | None = None, device: str = "auto",
                  backbones: list[str] | None = None, preloaded: dict[str, Any] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Copy the first ``keep`` static videos of each prompt (sorted file order, prompt from the file name)
    to ``out/{prompt}-{i}{ext}`` and write ``out/static_filter.json`` (every decision and the flow backbone).

    ``keep=None`` keeps every static video (VBench's ``--filter_scope all``); ``prompts`` restricts the
    prompts considered (VBench's default scope is the temporal_flickering prompts).
    """
    folder, out = Path(videos), Path(out)
    if not folder.is_dir():
        raise InputError(f"videos folder {folder} does not exist; pass --videos DIR")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    ctx = LoadContext(Path(weights_dir) if weights_dir else default_weights_dir(), resolve_device(device))
    bbs = resolve_backbones(["flow"], {"flow": backbones or FLOW_BACKBONES}, ctx, preloaded)
    if "flow" not in bbs.chosen:
        raise InputError(f"static filter: no flow backbone ({bbs.missing['flow']}); put raft-things.pth under "
                         "--weights DIR/raft_model/models/")
    flow = bbs.chosen["flow"]
    if not isinstance(flow, FlowBackbone):
        raise InputError(f"static filter: backbone {flow.name!r} gives no optical flow")
    wanted = set(prompts) if prompts is not None else None
    kept: dict[str, list[str]] = {}
    decisions = []
    for f in tqdm(files, desc="static filter", disable=not progress):
        prompt = prompt_from_filename(f)
        if wanted is not None and prompt not in wanted:
            continue
        if keep is not None and len(kept.get(prompt, [])) >= keep:
            continue
        try:
            frames, _ = decode(str(f))
            if frames.shape[0] < 2:
                raise InputError(f"{f}: fewer than 2 frames")
            d = video_is_static(frames, flow)
        except Exception as err:  # noqa: BLE001 (an unreadable or too small file is reported, never aborts the filter)
            decisions.append({"path": str(f), "prompt": prompt, "error": f"{type(err).__name__}: {err}"})
            continue
        decisions.append({"path": str(f), "prompt": prompt, "static": d.static, "threshold": d.threshold,
                          "count_num": d.count_num, "moving_pairs": d.n_moving})
        if d.static:
            kept.setdefault(prompt, []).append(str(f))
    out.mkdir(parents=True, exist_ok=True)
    for prompt, paths in kept.items():
        for i, src in enumerate(paths):
            shutil.copy(src, out / f"{prompt}-{i}{Path(src).suffix}")
    short = [p for p, v in kept.items() if keep is not None and len(v) < keep]
    if short:
        log.warning("%d prompt(s) have fewer than %d static videos; sample more per prompt (VBench samples 25)", len(short), keep)
    summary = {"backbone": bbs.info["flow"]["label"], "note": bbs.info["flow"]["note"], "keep": keep,
               "kept": kept, "decisions": decisions}
    atomic_write_json(out / "static_filter.json", summary)
    return summary
