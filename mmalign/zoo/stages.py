"""What the generator trainers of the zoo share: a resumable training stage, the command line, the run.

* :class:`TrainStage` — the optimizer / LR-scheduler steps, an optional EMA of the weights and the data
  RNG of one stage, saved and resumed by :class:`mmalign.checkpoint.StageCheckpoint` (``touch WORK/STOP``
  ends the stage early, saved; running the command again resumes it);
* :func:`seeded` — a stage's ``seed`` seeds torch's global RNG (module initialisation draws from it)
  for the call only;
* :func:`trainer_parser` and :func:`run_trainer` — the options every trainer takes and the run: the
  stages in order, then the held-out evaluation written as ``OUT/eval.json`` next to the model, and
  the run log (``WORK/train_log.jsonl``) copied beside it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from tqdm.auto import tqdm

from mmalign.checkpoint import Log, StageCheckpoint, atomic_folder
from mmalign.fileio import atomic_write, atomic_write_json
from mmalign.paths import asset_path
from mmalign.rng import owned_rng

P = ParamSpec("P")
R = TypeVar("R")
#: one training step's losses from the stage's data RNG: ``"loss"`` is optimised, every entry is logged
LossFn = Callable[[torch.Generator], dict[str, torch.Tensor]]
#: a stage of a trainer: ``stage(args, work, out, log)`` trains into ``work`` (the last stage saves into ``out``)
Stage = Callable[[argparse.Namespace, Path, Path, Log], None]


def seeded(stage: Callable[P, R]) -> Callable[P, R]:
    """Run ``stage`` inside :func:`mmalign.rng.owned_rng` of its ``seed`` argument: the global RNG its modules
    are initialised from is seeded for the call and the caller's RNG is restored after."""
    signature = inspect.signature(stage)

    @functools.wraps(stage)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with owned_rng(bound.arguments["seed"]):
            return stage(*args, **kwargs)

    return run


class TrainStage:
    """One resumable training stage of ``modules`` with ``opt`` and ``sched``.

    Each step: ``loss_fn(rng)``, backward, gradients clipped at norm ``clip`` (``None``: not clipped),
    optimizer and scheduler steps, then the EMA (decay ``ema_decay``; with ``ema_warmup``
    ``min(ema_decay, (1 + step) / (10 + step))``). Model, EMA, optimizer, scheduler, the data RNG
    (seeded with ``seed``) and the step are saved every ``every`` steps in ``WORK/<name>_state.pt``, so a
    stage stopped at step N and resumed equals an uninterrupted run.
    """

    def __init__(self, work: Path, name: str, modules: torch.nn.Module, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, seed: int, every: int, log: Log, clip: float | None = 1.0,
                 ema_decay: float | None = None, ema_warmup: bool = False, log_every: int = 50) -> None:
        self.name, self.modules, self.opt, self.sched, self.every, self.log = name, modules, opt, sched, every, log
        self.clip, self.ema_decay, self.ema_warmup, self.log_every = clip, ema_decay, ema_warmup, log_every
        self.params = [p for p in modules.parameters() if p.requires_grad]
        self.ema = None if ema_decay is None else copy.deepcopy(modules).requires_grad_(False)
        self.rng = torch.Generator().manual_seed(seed)
        parts = {"model": modules, "opt": opt, "sched": sched}
        if self.ema is not None:
            parts["ema"] = self.ema
        self.ckpt = StageCheckpoint(work, name, parts, self.rng, log)
        self.step = self.ckpt.resume()

    @property
    def weights(self) -> torch.nn.Module:
        """The modules to ship: the EMA when there is one, else the trained modules."""
        return self.modules if self.ema is None else self.ema

    def run(self, steps: int, loss_fn: LossFn) -> None:
        """Train until ``steps`` steps are done, or ``WORK/STOP`` appears (saved, so the next run resumes)."""
        start, t0 = self.step, time.time()
        bar = tqdm(range(self.step, steps), desc=self.name, mininterval=5, initial=self.step, total=steps)
        for _ in bar:
            losses = loss_fn(self.rng)
            self.opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            if self.ema is not None:
                self._update_ema()
            if (self.step - 1) % self.log_every == 0:
                bar.set_postfix(loss=f"{losses['loss'].item():.4f}", refresh=False)
                self.log(json.dumps({"stage": self.name, "step": self.step, **{k: v.item() for k, v in losses.items()},
                                     "lr": self.sched.get_last_lr()[0],
                                     "s_per_step": (time.time() - t0) / (self.step - start)}))
            if self.ckpt.after_step(self.step, steps, self.every):
                return

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step)) if self.ema_warmup else self.ema_decay
        for e, p in zip(self.ema.parameters(), self.modules.parameters()):
            if p.requires_grad:
                e.lerp_(p, 1 - decay)


def warmup_schedule(opt: torch.optim.Optimizer, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then the constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))


def save_generator(generator: Any, out: Path) -> None:
    """``generator.save_pretrained(out)`` (pipeline + sampling defaults) through a temporary folder and a rename."""
    atomic_folder(out, generator.save_pretrained)


def trainer_parser(doc: str, stages: tuple[str, str], *, vae_steps: int, steps: int, batch: int, bank: int,
                   eval_n: int, vae_bank: int | None = None) -> argparse.ArgumentParser:
    """The options of a trainer whose ``stages`` are a VAE stage and a denoiser stage (``--stage`` also takes
    ``all`` and ``eval``); defaults as given (``vae_bank=None``: as many items as ``--bank``)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["all", *stages, "eval"], default="all")
    p.add_argument("--vae-steps", type=int, default=vae_steps)
    p.add_argument("--steps", type=int, default=steps, help=f"{stages[1]} training steps")
    p.add_argument("--batch", type=int, default=batch, help=f"{stages[1]} batch size")
    p.add_argument("--bank", type=int, default=bank, help=f"rendered training items of the {stages[1]} stage")
    p.add_argument("--vae-bank", type=int, default=vae_bank,
                   help=f"rendered training items of the VAE stage (default: {vae_bank or 'as --bank'})")
    p.add_argument("--eval-n", type=int, default=eval_n, help="held-out prompts for the oracle evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--work", type=Path, default=None, help="folder of the resumable state and the run log "
                   "(default: assets/models/<model>.work)")
    p.add_argument("--out", type=Path, default=None, help="model folder, the one the preset loads "
                   "(default: assets/models/<model>)")
    return p


def run_trainer(args: argparse.Namespace, name: str, stages: dict[str, Stage],
                evaluate: Callable[[Path, int], dict[str, Any]]) -> None:
    """Run ``stages`` (all, or the one ``--stage`` names) in order, then ``evaluate(out, eval_n)`` into
    ``OUT/eval.json`` (after the last stage, or alone with ``--stage eval``)."""
    torch.set_num_threads(args.threads)
    if args.vae_bank is None:
        args.vae_bank = args.bank
    work = args.work or asset_path("models", name + ".work")
    out = args.out or asset_path("models", name)
    log = run_log(work)
    log(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}}))
    t0 = time.time()
    for stage, train in stages.items():
        if args.stage in ("all", stage):
            train(args, work, out, log)
            log(json.dumps({"stage": stage, "done_s": time.time() - t0}))
    if args.stage in ("all", list(stages)[-1], "eval"):
        result = {**evaluate(out, args.eval_n), "train_wall_s": round(time.time() - t0, 1)}
        atomic_write_json(out / "eval.json", result)
        log(json.dumps({"stage": "eval", **result}))
        atomic_write(out / "train_log.jsonl", lambda tmp: shutil.copyfile(work / "train_log.jsonl", tmp))
        print(json.dumps(result))
    print(f"done in {(time.time() - t0) / 60:.1f} min; model in {out}")


def run_log(work: Path) -> Log:
    """A logger appending lines to ``WORK/train_log.jsonl``, one write per line (a killed run keeps its log)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "train_log.jsonl"

    def log(line: str) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return log
