"""Resumable training stages of the shipped synth models: checkpoint, resume, ``touch WORK/STOP``, atomic saves."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Log = Callable[[str], None]


class StageCheckpoint:
    """Resume / save / stop of one stage: the ``state_dict`` of each object in ``parts`` (model, optimizer, ...),
    the data RNG and the step, in ``WORK/<stage>_state.pt`` (written through a temp file and a rename).
    ``touch WORK/STOP`` ends the stage after the current step (saved); the file is consumed, so a
    full run goes on with its next stage and running the command again resumes."""

    def __init__(self, work: Path, stage: str, parts: dict[str, Any], rng: torch.Generator, log: Log) -> None:
        self.work, self.stage, self.parts, self.rng, self.log = work, stage, parts, rng, log
        self.path = work / f"{stage}_state.pt"

    def resume(self) -> int:
        """Load the saved state if there is one; returns the step to start from."""
        if not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=False)
        for key, part in self.parts.items():
            part.load_state_dict(state[key])
        self.rng.set_state(state["rng"])
        self.log(json.dumps({"stage": self.stage, "resumed_at": state["step"]}))
        return state["step"]

    def after_step(self, done: int, steps: int, every: int) -> bool:
        """Save every ``every`` steps, at the end and when asked to stop; True when the stage must stop."""
        stop = (self.work / "STOP").exists()
        if done % every == 0 or done == steps or stop:
            state = {key: part.state_dict() for key, part in self.parts.items()}
            tmp = self.path.with_suffix(".tmp")
            torch.save({**state, "rng": self.rng.get_state(), "step": done}, tmp)
            os.replace(tmp, self.path)
        if stop:
            self.log(json.dumps({"stage": self.stage, "stopped_at": done}))
            (self.work / "STOP").unlink(missing_ok=True)
        return stop


def save_atomic(module: Any, out: Path) -> None:
    """``module.save_pretrained(out)`` through a temp folder and a rename, so ``out`` is never half written."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def add_run_args(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every synth training script shares: seed, threads, work and output folders."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--work", type=Path, default=None, help=f"work folder (default: assets/models/{name}.work)")
    parser.add_argument("--out", type=Path, default=None, help=f"model folder (default: assets/models/{name})")


def start_run(args: argparse.Namespace, name: str) -> tuple[Path, Path, Log]:
    """Apply ``--threads``, resolve the work and output folders and open the run log (which gets the arguments)."""
    from mmalign.paths import asset_path

    torch.set_num_threads(args.threads)
    work = args.work or asset_path("models", name + ".work")
    out = args.out or asset_path("models", name)
    log = run_log(work)
    log(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}}))
    return work, out, log


def run_log(work: Path) -> Log:
    """A logger appending JSON lines to ``WORK/train_log.jsonl`` (flushed per line, so a killed run keeps its log)."""
    work.mkdir(parents=True, exist_ok=True)
    fh = open(work / "train_log.jsonl", "a")  # noqa: SIM115 (open for the life of the run)

    def log(line: str) -> None:
        fh.write(line + "\n")
        fh.flush()

    return log
