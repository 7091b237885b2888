"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX`` holding the trainable weights
(safetensors), the optimizer and LR-scheduler states, the RNG states (torch, CUDA, numpy, python)
and ``state.json`` (step, data position, eval history). It is written into a hidden temporary
folder and renamed into place, then the ``latest`` pointer is replaced atomically, so a run killed
at any moment (``kill -9``) leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmalign.errors import CheckpointError
from mmalign.fileio import atomic_write_text

PREFIX = "step-"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor], optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step after resuming from an older checkpoint
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "latest", final.name)
    for stale in sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        if stale != final:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def clean_partial(root: Path) -> None:
    """Remove temporary folders left by a run killed while writing a checkpoint."""
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in root.glob(".old-*"):
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (via ``latest``, else the highest step folder)."""
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / "state.json").is_file():
            return candidate
    found = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict, dict[str, Any], dict[str, Any]]:
    """(weights, optimizer state, scheduler state, rng state, state.json) of checkpoint ``path``."""
    try:
        weights = load_file(str(path / "weights.safetensors"))
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        sched = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e}); delete it to resume from the previous one") from e
    return weights, opt, sched, rng, state


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "clean_partial", "rng_state", "set_rng_state"]
