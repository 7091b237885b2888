"""Atomic, resumable training checkpoints for every trainer.

Everything here is written beside its target and renamed into place (:func:`mmalign.fileio.atomic_write`
for files, :func:`atomic_folder` for folders), so a run killed at any moment (``kill -9``) leaves the
previous state or the new one, never half of one.

* Preference training: a checkpoint is a folder ``checkpoints/step-XXXXXXXX`` holding the trainable
  weights (safetensors), the optimizer and LR-scheduler states and ``state.json`` (step, data
  position, eval history); no RNG state, as the trainer's random draws come from generators seeded by
  (seed, step), not from global state; ``latest`` names the newest one
  (:func:`save_checkpoint`, :func:`latest_checkpoint`, :func:`load_checkpoint`, :func:`clean_partial`).
* Stages of the shipped models' trainers: :class:`StageCheckpoint` keeps the ``state_dict`` of each part
  (model, EMA, optimizer, ...), the data RNG and the step in one file, ``WORK/<stage>_state.pt``, and
  ends the stage when a ``WORK/STOP`` file appears.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmalign.errors import CheckpointError
from mmalign.fileio import atomic_write, atomic_write_text

PREFIX = "step-"
Log = Callable[[str], None]


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk where the OS allows it; a folder fsync may be refused."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_folder(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on an empty hidden folder next to ``path``, fsync what it wrote, then swap it in.

    An existing ``path`` is first renamed aside and deleted after the swap. The temporary names start
    with ``.tmp-`` / ``.old-`` (:func:`clean_partial` removes them after a crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for folder, _, files in os.walk(tmp):
            for f in files:
                _fsync(Path(folder, f))
            _fsync(Path(folder))
        if path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(path.parent)
    return path


def save_checkpoint(root: Path, step: int, weights: dict[str, torch.Tensor], optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` ones."""

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")

    final = atomic_folder(root / f"{PREFIX}{step:08d}", write)
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


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict, dict[str, Any]]:
    """(weights, optimizer state, scheduler state, state.json) of checkpoint ``path``."""
    try:
        weights = load_file(str(path / "weights.safetensors"))
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        sched = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e}); delete it to resume from the previous one") from e
    return weights, opt, sched, state


class StageCheckpoint:
    """Resume / save / stop of one training stage: the ``state_dict`` of each object in ``parts`` (model,
    optimizer, ...), the data RNG ``rng`` and the step, in ``WORK/<stage>_state.pt``.

    ``touch WORK/STOP`` ends the stage after the current step (saved); the file is consumed, so a full
    run goes on with its next stage and running the command again resumes.
    """

    def __init__(self, work: Path, stage: str, parts: dict[str, Any], rng: torch.Generator, log: Log) -> None:
        self.work, self.stage, self.parts, self.rng, self.log = Path(work), stage, parts, rng, log
        self.path = self.work / f"{stage}_state.pt"

    def resume(self) -> int:
        """Load the saved state if there is one; returns the step to start from."""
        if not self.path.exists():
            return 0
        try:
            state = torch.load(self.path, weights_only=False)
            for key, part in self.parts.items():
                part.load_state_dict(state[key])
            self.rng.set_state(state["rng"])
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{self.path}: cannot resume stage {self.stage!r} ({type(e).__name__}: {e}); "
                                  "delete the file to start the stage over") from e
        self.log(json.dumps({"stage": self.stage, "resumed_at": state["step"]}))
        return state["step"]

    def after_step(self, done: int, steps: int, every: int) -> bool:
        """Save every ``every`` steps, at the end and when asked to stop; True when the stage must stop."""
        stop = (self.work / "STOP").exists()
        if done % every == 0 or done == steps or stop:
            state = {**{key: part.state_dict() for key, part in self.parts.items()}, "rng": self.rng.get_state(),
                     "step": done}
            atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        if stop:
            self.log(json.dumps({"stage": self.stage, "stopped_at": done}))
            (self.work / "STOP").unlink(missing_ok=True)
        return stop


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "clean_partial", "atomic_folder", "StageCheckpoint"]
