"""The benchmark runner: decode once, share backbone outputs, cache, resume, split over processes.

For each media file of a suite the runner

1. hashes the file (SHA-256) and decodes it once (PyAV through :func:`mmalign.media.load_video`);
2. resamples frames per dimension (:class:`~mmalign.bench.dimensions.Sampling`);
3. runs each backbone once per (video, frame set) — DINO, CLIP, flow, detector, … — batched over
   frames, and shares the result with every dimension that declared the backbone's role;
4. keeps those outputs in a per-video feature cache on disk (``cache/<sha>.<dtype>.pt``, keyed by file hash,
   atomic writes), so a rerun with more dimensions reuses them;
5. writes one per-video record (``records/<sha>.json``, atomic) — a killed run resumes by skipping
   the videos whose record already holds every requested dimension.

Unreadable files (corrupt, empty, zero frames) are reported in ``skipped`` and never reach an
aggregate; with ``strict=True`` the first one raises. Work is split over processes with
accelerate's ``PartialState.split_between_processes`` when launched with ``accelerate launch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmalign.bench.action import ActionBackbone
from mmalign.bench.backbones import (
    Backbone,
    BackboneMissing,
    FeatureBackbone,
    FlowBackbone,
    InterpBackbone,
    LoadContext,
    ScoreBackbone,
    default_weights_dir,
    load_backbone,
)
from mmalign.bench.detectors import Detection, DetectorBackbone
from mmalign.bench.dimensions import Dimension, Sampling, get_dimension
from mmalign.bench.suites import Item, Suite
from mmalign.bench.viclip import VideoTextBackbone
from mmalign.devices import dtype_name, resolve_device, resolve_dtype
from mmalign.errors import ConfigError, InputError, MMAlignError
from mmalign.fileio import atomic_write, atomic_write_json

log = logging.getLogger(__name__)
RECORD_VERSION = 2


# ---------------------------------------------------------------------------------------------
# files


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def decode(path: str, modality: str = "video") -> tuple[torch.Tensor, float]:
    """Decode a file once: uint8 frames ``[T, 3, H, W]`` and fps (images: T = 1, fps = 0)."""
    from mmalign.media import load_image, load_video

    if modality == "image":
        batch = load_image(path)
        px, fps = batch.pixels[:, None], 0.0
    else:
        batch = load_video(path)
        px, fps = batch.pixels, float(batch.fps)
    frames = (px[0] * 255.0).round().clamp(0, 255).to(torch.uint8)  # exact inverse of the loader's /255
    if frames.shape[0] == 0:
        raise InputError(f"{path}: zero frames")
    return frames, fps


# ---------------------------------------------------------------------------------------------
# backbones


@dataclass
class ResolvedBackbones:
    """The backbone chosen for each role (first loadable preference), with notes and failures."""

    chosen: dict[str, Backbone] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def _try_load(name: str, ctx: LoadContext) -> Backbone | BackboneMissing:
    """Load backbone ``name``; any failure (missing file or package, corrupt or wrong-format weights,
    a third-party loader's own error) comes back as a :class:`BackboneMissing` holding the reason."""
    try:
        return load_backbone(name, ctx)
    except BackboneMissing as err:
        return err
    except ConfigError:
        raise  # an unknown backbone name is a suite error, not a missing file
    except Exception as err:  # noqa: BLE001 (a load failure marks the role unavailable, never aborts the run)
        log.warning("backbone %s failed to load: %s: %s", name, type(err).__name__, err)
        return BackboneMissing(f"failed to load ({type(err).__name__}: {err})")


def resolve_backbones(roles: Iterable[str], prefs: dict[str, list[str]], ctx: LoadContext,
                      preloaded: dict[str, Backbone] | None = None) -> ResolvedBackbones:
    """Load each role's first available backbone once; record fallbacks and why others were missing."""
    out = ResolvedBackbones()
    cache: dict[str, Backbone | BackboneMissing] = dict(preloaded or {})
    for role in sorted(set(roles)):
        names = prefs.get(role, [])
        reasons = []
        for rank, name in enumerate(names):
            if name not in cache:
                cache[name] = _try_load(name, ctx)
            got = cache[name]
            if isinstance(got, BackboneMissing):
                reasons.append(f"{name}: {got}")
                continue
            out.chosen[role] = got
            note = got.note
            if rank > 0:
                note = f"fallback for {names[0]}" + (f"; {note}" if note else "")
            out.info[role] = {"name": got.name, "label": got.label, "origin": got.origin, "note": note,
                              "fallback": rank > 0, "unavailable": reasons}
            break
        else:
            out.missing[role] = "; ".join(reasons) if reasons else f"no backbone configured for role {role!r}"
            out.info[role] = {"name": None, "label": None, "origin": None, "note": "backbone missing",
                              "fallback": False, "unavailable": reasons}
    return out


# ---------------------------------------------------------------------------------------------
# per-video shared inputs


class SharedInputs:
    """:class:`~mmalign.bench.dimensions.VideoInputs` of one decoded video; every output computed once."""

    def __init__(self, item: Item, frames: torch.Tensor, fps: float, backbones: ResolvedBackbones,
                 cache: dict[str, Any], text_cache: dict[str, torch.Tensor], modality: str):
        self.path, self.prompt, self.aux = item.path, item.prompt, {}
        self._frames, self.fps = frames, fps
        self.num_frames, _, self.height, self.width = frames.shape
        self._bb, self._cache, self._text, self.modality = backbones, cache, text_cache, modality
        self.dirty = False

    def _get(self, role: str, kind: type[Backbone] = Backbone) -> Backbone:
        """The backbone chosen for ``role``; a ConfigError when the suite gave the role a backbone of another kind."""
        if role not in self._bb.chosen:
            raise BackboneMissing(f"role {role!r}: {self._bb.missing.get(role, 'not loaded')}")
        bb = self._bb.chosen[role]
        if not isinstance(bb, kind):
            raise ConfigError(f"role {role!r} needs a {kind.__name__}, but backbone {bb.name!r} is a {type(bb).__name__}; "
                              "fix the suite's backbones for this role")
        return bb

    def _memo(self, key: str, compute):
        if key not in self._cache:
            self._cache[key] = compute()
            self.dirty = True
        return self._cache[key]

    def _idx(self, s: Sampling) -> list[int]:
        return s.indices(self.num_frames, self.fps)

    def frames(self, s: Sampling) -> torch.Tensor:
        return self._frames if s.mode == "all" else self._frames[self._idx(s)]

    def features(self, role: str, s: Sampling) -> torch.Tensor:
        bb = self._get(role)
        idx = self._idx(s)
        if not isinstance(bb, (FeatureBackbone, ScoreBackbone)):
            raise InputError(f"backbone {bb.name!r} for role {role!r} gives no features")
        # features are computed once per distinct frame of the video and indexed per sampling
        uniq = sorted(set(idx))
        key = f"feat:{bb.name}:" + ",".join(map(str, uniq))
        full_key = f"feat:{bb.name}:all"
        if full_key in self._cache:
            return self._cache[full_key][idx]
        if s.mode == "all":
            return self._memo(full_key, lambda: bb.features(self._frames))
        feats = self._memo(key, lambda: bb.features(self._frames[uniq]))
        pos = {f: i for i, f in enumerate(uniq)}
        return feats[[pos[i] for i in idx]]

    def video_features(self, role: str, s: Sampling) -> torch.Tensor:
        """One L2-normalised embedding ``[D]`` of the frames of ``s``: a video encoder's (ViCLIP), or, for
        a frame encoder standing in for one, the normalised mean of its normalised frame features."""
        bb = self._get(role)
        if isinstance(bb, VideoTextBackbone):
            idx = self._idx(s)
            return self._memo(f"video:{bb.name}:" + ",".join(map(str, idx)), lambda: bb.encode_video(self._frames[idx]))
        return F.normalize(F.normalize(self.features(role, s), dim=-1).mean(0), dim=-1)

    def text_features(self, role: str, texts: list[str]) -> torch.Tensor:
        bb = self._get(role)
        out = []
        for t in texts:
            k = f"{bb.name}\0{t}"
            if k not in self._text:
                self._text[k] = bb.encode_text([t])[0]
            out.append(self._text[k])
        return torch.stack(out)

    def flow(self, role: str, s: Sampling) -> torch.Tensor:
        bb = self._get(role, FlowBackbone)
        idx = self._idx(s)
        key = f"flow:{bb.name}:" + ",".join(map(str, idx))
        return self._memo(key, lambda: bb.magnitudes(self._frames[idx[:-1]], self._frames[idx[1:]]).half()).float()

    def midpoints(self, role: str) -> torch.Tensor:
        bb = self._get(role, InterpBackbone)
        even = self._frames[0::2]
        return self._memo(f"interp:{bb.name}", lambda: bb.midpoints(even[:-1], even[1:]))

    def detections(self, role: str, s: Sampling, queries: list[tuple[str, str]] | None = None) -> list[list[Detection]]:
        bb = self._get(role, DetectorBackbone)
        idx = self._idx(s)
        uniq = sorted(set(idx))  # 'middle' sampling pads short videos by repeating the last index
        open_vocab = getattr(bb.detector, "open_vocabulary", False) and queries
        qkey = hashlib.sha256(json.dumps(queries).encode()).hexdigest()[:16] if open_vocab else "closed"
        key = f"det:{bb.name}:{qkey}:" + ",".join(map(str, uniq))

        def run() -> list:
            dets = bb.detector.detect(self._frames[uniq], queries=queries) if open_vocab else bb.detector.detect(self._frames[uniq])
            return [[(d.label, list(d.box), d.score, d.caption) for d in frame] for frame in dets]

        raw = self._memo(key, run)
        pos = {f: i for i, f in enumerate(uniq)}
        return [[Detection(lab, tuple(box), sc, cap) for lab, box, sc, cap in raw[pos[i]]] for i in idx]

    def classify(self, role: str, s: Sampling) -> tuple[torch.Tensor, tuple[str, ...]]:
        bb = self._get(role, ActionBackbone)
        idx = self._idx(s)
        logits = self._memo(f"action:{bb.name}:" + ",".join(map(str, idx)), lambda: bb.logits(self._frames[idx]))
        return logits, bb.labels

    def oracle(self) -> dict[str, Any]:
        bb = self._get("oracle")
        return self._memo(f"oracle:{bb.name}:{self.prompt}", lambda: bb.check(self._frames, self.prompt, self.modality))


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class RunResult:
    """Per-video records (by dimension), skipped files, missing files and backbone info."""

    suite: Suite
    dimensions: list[str]
    records: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    missing: list[str]
    backbones: dict[str, dict[str, Any]]
    unavailable: dict[str, str]  # dimension -> reason (backbone missing or failed to load)
    out_dir: Path
    is_main: bool = True  # False on the other processes of an accelerate launch (they write no report)
    dtype: str = "fp32"  # compute dtype of the learned backbones


def _load_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a cache is disposable: recompute rather than fail)
        log.warning("ignoring unreadable feature cache %s (%s)", path, err)
        return {}


def _done(rec_path: Path, sha: str, dims: list[str], bb_names: dict[str, Any]) -> dict[str, Any] | None:
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("version") != RECORD_VERSION or rec.get("sha256") != sha or rec.get("backbones") != bb_names:
        return None
    if rec.get("error") is None and not all(d in rec.get("dims", {}) for d in dims):
        return None
    if any(d in rec.get("failures", {}) for d in dims):  # retry what failed last time
        return None
    return rec


def dist_state(device: str = "auto"):
    """accelerate's ``PartialState`` under ``accelerate launch`` / torchrun (``WORLD_SIZE`` > 1), else ``None``.

    Created before any backbone is loaded, so each rank's model lands on its own device (CPU
    processes talk over gloo when ``device`` is ``cpu`` or no GPU is present)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from mmalign.devices import process_state

    return process_state(device)


def run_benchmark(
    suite: Suite,
    videos: str | os.PathLike,
    out: str | os.PathLike,
    dimensions: list[str] | None = None,
    *,
    weights_dir: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "fp32",
    backbones: dict[str, list[str]] | None = None,
    preloaded: dict[str, Backbone] | None = None,
    strict: bool = False,
    cache: bool = True,
    progress: bool = True,
    batch_size: int = 32,
) -> RunResult:
    """Evaluate the files in ``videos`` on ``suite`` and write per-video records under ``out``.

    ``backbones`` overrides the suite's role → [backbone names] preferences; ``preloaded`` maps
    backbone names to ready objects (tests, notebooks). ``dtype`` (``fp32 | bf16 | fp16 | auto``,
    :func:`mmalign.devices.resolve_dtype`) is the compute dtype of the learned backbones; their
    outputs and every formula stay fp32. A backbone that cannot be loaded makes its dimensions
    unavailable (with the reason) and the others run; ``strict=True`` makes that, an unreadable file
    or a dimension failing on a video fatal. Under ``accelerate launch`` each process takes its share
    of the files on its own device; the main process gathers the records in input order.
    """
    out = Path(out)
    dims = list(dimensions or suite.dimensions)
    dim_objs: dict[str, Dimension] = {d: get_dimension(d) for d in dims}
    items, missing = suite.items(videos, dims)
    if not items:
        raise InputError(f"no file in {videos} matches suite {suite.name!r} for dimensions {dims}: expected names like "
                         f"{missing[0] if missing else '(none)'!r} (the suite's naming '{suite.naming}'); "
                         "check --suite and --dimensions, or use --suite custom for videos with any names")
    state = dist_state(device)  # before loading backbones: each rank's device
    dev = state.device if state is not None and device == "auto" else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev, what="benchmark backbones")
    ctx = LoadContext(Path(weights_dir) if weights_dir else default_weights_dir(), dev, batch_size, torch_dtype)
    prefs = {**suite.backbones, **(backbones or {})}
    roles = {r for d in dim_objs.values() for r in d.roles}
    bbs = resolve_backbones(roles, prefs, ctx, preloaded)
    unavailable = {}
    for name, d in dim_objs.items():
        lacking = [r for r in d.roles if r in bbs.missing]
        if lacking:
            unavailable[name] = "backbone unavailable: " + "; ".join(f"{r} ({bbs.missing[r]})" for r in lacking)
    if strict and unavailable:
        raise BackboneMissing("--strict: dimensions without a backbone: " + "; ".join(f"{d}: {r}" for d, r in unavailable.items())
                              + " (put VBench's weight files under --weights DIR, or drop --strict to skip them)")
    active = [d for d in dims if d not in unavailable]
    bb_names = {r: i["label"] for r, i in sorted(bbs.info.items())}
    dtype_label = dtype_name(torch_dtype)

    mine = items
    if state is not None:
        with state.split_between_processes(items) as part:
            mine = list(part)

    text_cache: dict[str, torch.Tensor] = {}
    for item in tqdm(mine, desc=f"bench {suite.name}", disable=not progress):
        _evaluate_item(item, suite, dim_objs, active, bbs, bb_names, out, text_cache, cache, strict, dtype_label)
    if state is not None:
        state.wait_for_everyone()

    records, skipped = [], []
    for item in items:
        rec_path = out / "records" / f"{_item_key(item)}.json"
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, json.JSONDecodeError):
            skipped.append({"path": item.path, "error": "no record written (the run was interrupted?)"})
            continue
        if rec.get("error"):
            skipped.append({"path": item.path, "error": rec["error"]})
        else:
            records.append(rec)
    return RunResult(suite, dims, records, skipped, missing, bbs.info, unavailable, out,
                     is_main=state is None or state.is_main_process, dtype=dtype_label)


def _item_key(item: Item) -> str:
    return hashlib.sha256(f"{item.path}\0{item.prompt}\0{item.index}".encode()).hexdigest()[:24]


def _evaluate_item(item: Item, suite: Suite, dim_objs: dict[str, Dimension], active: list[str], bbs: ResolvedBackbones,
                   bb_names: dict[str, Any], out: Path, text_cache: dict, use_cache: bool, strict: bool,
                   dtype: str) -> None:
    rec_path = out / "records" / f"{_item_key(item)}.json"
    wanted = [d for d in active if d in item.dimensions]
    bb_names = {**bb_names, "dtype": dtype}  # a record is reused only with the same backbones and dtype
    base = {"version": RECORD_VERSION, "path": item.path, "prompt": item.prompt, "index": item.index,
            "backbones": bb_names}
    try:
        sha = file_sha256(item.path)
    except OSError as err:
        sha = ""
        err_msg = f"cannot read file: {err}"
    else:
        err_msg = None
    if sha and _done(rec_path, sha, wanted, bb_names) is not None:
        return
    frames = None
    if err_msg is None:
        try:
            frames, fps = decode(item.path, suite.modality)
        except MMAlignError as err:
            err_msg = str(err)
        except Exception as err:  # noqa: BLE001 (third-party decoder failures: report, never crash the run)
            err_msg = f"{item.path}: cannot decode ({type(err).__name__}: {err})"
    if frames is None:
        if strict:
            raise InputError(f"{err_msg} (--strict: stopping; drop --strict to skip unreadable files)")
        log.warning("skipping %s: %s", item.path, err_msg)
        atomic_write_json(rec_path, {**base, "sha256": sha, "error": err_msg, "dims": {}})
        return
    cache_path = out / "cache" / f"{sha}.{dtype}.pt"
    feat_cache = _load_cache(cache_path) if use_cache else {}
    inputs = SharedInputs(item, frames, fps, bbs, feat_cache, text_cache, suite.modality)
    results: dict[str, Any] = {}
    try:  # keep dimensions measured by an earlier run of the same file with the same backbones
        old = json.loads(rec_path.read_text())
        if old.get("sha256") == sha and old.get("backbones") == bb_names and not old.get("error"):
            results.update(old.get("dims", {}))
    except (OSError, json.JSONDecodeError):
        pass
    failures: dict[str, str] = {}
    for name in wanted:
        inputs.aux = item.aux.get(name, {})
        try:
            r = dim_objs[name].measure(inputs)
        except Exception as err:  # noqa: BLE001 (one dimension failing on one video never aborts the run)
            if strict:
                raise
            failures[name] = f"{type(err).__name__}: {err}"
            log.warning("%s failed on %s: %s", name, item.path, failures[name])
            r = None
        results[name] = None if r is None else {**r, "prompt": item.prompt, "index": item.index}
    if use_cache and inputs.dirty:
        atomic_write(cache_path, lambda tmp: torch.save(feat_cache, tmp))
    atomic_write_json(rec_path, {**base, "sha256": sha, "error": None, "dims": results, "failures": failures,
                                 "frames": int(frames.shape[0]), "fps": fps, "size": [inputs.height, inputs.width]})
