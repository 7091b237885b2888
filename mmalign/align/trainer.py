"""The preference-tuning trainer: Diffusion-DPO, RankDPO, LiPO-λ and SFT on any :class:`DiffusionAdapter`.

One loop for every generator family (``ARCHITECTURE.md``, "Trainer"):

1. validate the recipe (unknown keys fail here, before any work);
2. read the preference data, encode latents and text conditioning once (``mmalign.data.cache``)
   and release the VAE / text encoders;
3. LoRA (peft, on ``adapter.denoiser`` at ``adapter.lora_target_modules``) or full fine-tuning;
   the reference is the same denoiser with its adapters disabled (LoRA, ``no_grad``) or a frozen
   deep copy (full), as in the diffusers SDXL DPO script (``training.md`` §1.2, §7.4);
4. per micro-batch of B records of k items: one t and one ε per record, shared by its k items
   (P4, official ``train.py`` L1053–1055), per-sample errors in fp32, the method's loss;
5. accelerate for devices and mixed precision; gradient accumulation, clipping, metrics to
   ``metrics.jsonl`` (and TensorBoard if installed), held-out evaluation with early stopping and a
   reward-margin watch, atomic resumable checkpoints (``mmalign.align.checkpoint``).

Resuming (``resume=True``) restores weights, optimizer, scheduler, RNG states and the data
position, so on CPU a killed-and-resumed run ends with the same weights as an uninterrupted one.
Noise, timesteps and prompt dropout are drawn from generators seeded by (seed, step, micro-step,
process), so they do not depend on what ran before.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from mmalign.align import losses
from mmalign.align.checkpoint import (
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from mmalign.align.config import Recipe, load_recipe
from mmalign.fileio import atomic_write, atomic_write_text
from mmalign.data.cache import EncodedData, encode_dataset
from mmalign.data.pairs import PairDataset, RankingDataset, read_preferences
from mmalign.errors import CheckpointError, ConfigError
from mmalign.generators.base import DiffusionAdapter, Generator

EvalFn = Callable[[int], dict[str, float]]
#: recipe keys that may change between a checkpoint and its resumption
RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "keep_checkpoints", "output_dir", "progress", "eval", "device"}


@dataclass
class TrainResult:
    """What a run produced: its folder, final weights, steps done and why it stopped."""

    output_dir: Path
    final_dir: Path
    steps: int
    stopped: str  # "max_steps" | "early_stopping" | "reward_margin"
    best_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_history: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- noise


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A CPU generator for (seed, step, micro-step, process): stateless, hence resumable."""
    mixed = (((seed * 1_000_003 + step) * 1_009 + micro) * 131 + rank) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def shared_noise(adapter: DiffusionAdapter, latent_shape: Sequence[int], batch: int, k: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps ``[k·B]`` and noise ``[k·B, ...]`` for B records of k items, item-major.

    Row ``j·B + i`` is item j of record i; all k rows of record i share its t and ε (P4), and each
    record draws its own t. For k = 2 this is the official layout: winners in rows 0…B−1, losers in
    rows B…2B−1 (``train.py`` L1014–1016, L1053–1055).
    """
    t = adapter.sample_timesteps(batch, generator=generator)
    eps = torch.randn((batch, *latent_shape), generator=generator)
    return t.repeat(k), eps.repeat(k, *([1] * len(latent_shape)))


# ------------------------------------------------------------------------------------------- reference


def _set_lora_enabled(module: torch.nn.Module, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in module.modules():
        if isinstance(m, BaseTunerLayer):
            m.enable_adapters(enabled)


@contextlib.contextmanager
def lora_disabled(module: torch.nn.Module) -> Iterator[None]:
    """The reference of a LoRA run: the same denoiser with every LoRA adapter disabled."""
    _set_lora_enabled(module, False)
    try:
        yield
    finally:
        _set_lora_enabled(module, True)


@contextlib.contextmanager
def swapped_parameters(module: torch.nn.Module, other: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` with ``other``'s parameters and buffers (the frozen reference of a full fine-tune).

    Only tensor storage is swapped (under ``no_grad`` by the caller) and always swapped back.
    """
    pairs = list(zip(list(module.parameters()) + list(module.buffers()), list(other.parameters()) + list(other.buffers())))
    for a, b in pairs:
        a.data, b.data = b.data, a.data
    try:
        yield
    finally:
        for a, b in pairs:
            a.data, b.data = b.data, a.data


def _sdpa_context(backend: str):
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
    return sdpa_kernel([table[backend]])


# ----------------------------------------------------------------------------------------------- model


def _add_lora(recipe: Recipe, adapter: DiffusionAdapter) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = recipe.lora.targets or adapter.lora_target_modules
    cfg = LoraConfig(r=recipe.lora.rank, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                     target_modules=list(targets),
                     init_lora_weights="gaussian" if recipe.lora.init == "gaussian" else True)
    denoiser = adapter.denoiser
    denoiser.requires_grad_(False)
    try:
        inject_adapter_in_model(cfg, denoiser, adapter_name="default")
    except ValueError as e:
        raise ConfigError(f"recipe lora.targets {targets}: {e}; name modules of the denoiser") from e
    for name, p in denoiser.named_parameters():
        p.requires_grad_("lora_" in name)


def _trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _make_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    o = recipe.optimizer
    if o.name == "adamw":
        fused = o.fused if o.fused is not None else all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=fused or None)
    if o.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ConfigError("optimizer.name=adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                              "or use --set optimizer.name=adamw") from e
        return bnb.optim.AdamW8bit(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    from transformers.optimization import Adafactor

    # official SDXL settings (train.py L667–674): no relative step, no parameter scaling, clip 1.0
    return Adafactor(params, lr=lr, weight_decay=o.weight_decay, clip_threshold=1.0,
                     scale_parameter=False, relative_step=False, warmup_init=False)


# -------------------------------------------------------------------------------------------- the step


def _select_data(recipe: Recipe, dataset: PairDataset | RankingDataset) -> PairDataset | RankingDataset:
    if recipe.method in ("rank_dpo", "lipo"):
        return dataset.as_rankings() if isinstance(dataset, PairDataset) else dataset
    if isinstance(dataset, RankingDataset):
        return dataset.to_pairs(recipe.data.ranking_to_pairs, recipe.data.ties)
    return dataset


def compute_loss(recipe: Recipe, adapter: DiffusionAdapter, data: EncodedData, index: torch.Tensor,
                 generator: torch.Generator, device: torch.device, reference: Callable[[], Any],
                 autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics of one micro-batch of records ``index``: shared t/ε per record, fp32 errors."""
    items = data.items[index]
    if recipe.method == "sft":
        items = items[:, :1]
    b, k = items.shape
    x0 = data.latents[items.T.reshape(-1)]  # item-major: row j·B + i
    prompt_idx = data.prompts[index]
    if recipe.data.prompt_dropout > 0:
        drop = torch.rand(b, generator=generator) < recipe.data.prompt_dropout
        prompt_idx = torch.where(drop, torch.full_like(prompt_idx, data.empty_prompt), prompt_idx)
    t, eps = shared_noise(adapter, x0.shape[1:], b, k, generator)
    cond = {name: v[prompt_idx].repeat(k, *([1] * (v.ndim - 1))).to(device) for name, v in data.cond.items()}
    x0, eps, t = x0.to(device), eps.to(device), t.to(device)
    noisy = adapter.noise(x0, eps, t)
    target = adapter.target(x0, eps, t)
    ref_err = None
    with _sdpa_context(recipe.attention):
        if recipe.method != "sft":
            with torch.no_grad(), reference(), autocast():
                ref_err = losses.per_sample_error(adapter.predict(noisy, t, cond), target).view(k, b).T
        with autocast():
            pred = adapter.predict(noisy, t, cond)
    err = losses.per_sample_error(pred, target).view(k, b).T  # [B, k], fp32
    scores = data.scores[index].to(device)
    if recipe.method == "diffusion_dpo":
        return losses.diffusion_dpo_loss(err[:, 0], err[:, 1], ref_err[:, 0], ref_err[:, 1], recipe.beta,
                                         label=scores[:, 0], loss_type=recipe.loss_type)
    if recipe.method == "rank_dpo":  # β/2: k = 2 matches Diffusion-DPO's −(β/2) scale
        return losses.rank_dpo_loss(err - ref_err, scores, recipe.beta / 2, recipe.discount_ranks)
    if recipe.method == "lipo":
        return losses.lipo_lambda_loss(-(recipe.beta / 2) * (err - ref_err), scores)
    return losses.sft_loss(err[:, 0])


class _Order:
    """Deterministic data order: epoch e is ``randperm(M)`` seeded by (seed, e); position = records consumed."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self._epoch, self._perm = n, seed, -1, torch.empty(0, dtype=torch.long)

    def take(self, position: int, count: int) -> torch.Tensor:
        out = []
        for p in range(position, position + count):
            epoch = p // self.n
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            out.append(self._perm[p % self.n])
        return torch.stack(out)


# --------------------------------------------------------------------------------------------- metrics


class _MetricsLog:
    """Append-only ``metrics.jsonl`` (one line per step; on resume, lines past the checkpoint are cut)."""

    def __init__(self, out: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled = out / "metrics.jsonl", enabled
        if not enabled:
            return
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            if self._tb is not None:
                self._tb.close()


# ------------------------------------------------------------------------------------------------ eval


def default_eval_fn(recipe: Recipe, generator: Generator) -> EvalFn | None:
    """Held-out evaluation from ``recipe.eval``: sample, then mean scorer reward and/or oracle faithfulness."""
    ev = recipe.eval
    if ev.every == 0 or (ev.scorer is None and not ev.oracle):
        return None
    if ev.prompts.startswith("synth:"):
        from mmalign.synth.prompts import sample_prompts

        prompts = sample_prompts(generator.modality, ev.n_prompts, seed=ev.seed, split="heldout")
    else:
        lines = Path(ev.prompts).read_text(encoding="utf-8").splitlines()
        prompts = [p.strip() for p in lines if p.strip()][: ev.n_prompts]
    scorer = None
    if ev.scorer is not None:
        from mmalign.scoring import load_scorer

        scorer = load_scorer(ev.scorer)

    def evaluate(step: int) -> dict[str, float]:
        kw = {} if ev.steps is None else {"steps": ev.steps}
        media = generator.sample(prompts, n=1, seed=ev.seed, progress=False, **kw)
        out: dict[str, float] = {}
        if scorer is not None:
            out["score"] = float(scorer.score(media, prompts).float().mean())
        if ev.oracle:
            from mmalign.synth.oracle import evaluate as oracle

            res = oracle(media, prompts)
            out["oracle"] = float(res.faithfulness.float().mean())
            out.update({f"oracle/{k}": float(v) for k, v in res.per_skill_accuracy().items()})
        return out

    return evaluate


# ----------------------------------------------------------------------------------------------- train


def _recipe_signature(recipe: Recipe) -> dict[str, Any]:
    return {k: v for k, v in recipe.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}


def _write_final(out: Path, recipe: Recipe, denoiser: torch.nn.Module, trainable: dict[str, torch.nn.Parameter],
                 lora_config: Any) -> Path:
    from safetensors.torch import save_file

    final = out / "final"
    tmp = out / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if recipe.finetune == "lora":
        from peft import get_peft_model_state_dict

        save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(denoiser).items()},
                  str(tmp / "adapter_model.safetensors"))
        lora_config.save_pretrained(str(tmp))
    else:
        save_file({k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()},
                  str(tmp / "denoiser.safetensors"))
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _mean_metrics(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    return {k: float(sum(float(p[k]) for p in parts) / len(parts)) for k in parts[0]}


def train(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: Sequence[str] = (),
    resume: bool = False,
    adapter: DiffusionAdapter | None = None,
    generator: Generator | None = None,
    eval_fn: EvalFn | None = None,
) -> TrainResult:
    """Train per ``recipe`` (a YAML path, shipped name, mapping or :class:`Recipe`) with ``--set`` overrides.

    ``adapter`` / ``generator`` skip ``load_generator`` (tests, notebooks); ``eval_fn(step) -> metrics``
    replaces the recipe's held-out evaluation. Returns a :class:`TrainResult`.
    """
    recipe = load_recipe(recipe, overrides)  # unknown keys fail here, before any work
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=recipe.mixed_precision,
                              cpu=recipe.device == "cpu" or (recipe.device == "auto" and not torch.cuda.is_available()))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    out = Path(recipe.output_dir)
    ckpt_root = out / "checkpoints"
    clean_partial(ckpt_root)
    resume_from = latest_checkpoint(ckpt_root) if resume else None
    if not resume and latest_checkpoint(ckpt_root) is not None:
        raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue that run or choose another output_dir")
    saved = load_checkpoint(resume_from) if resume_from is not None else None
    if saved is not None and saved[4].get("recipe") != _recipe_signature(recipe):
        old, new = saved[4].get("recipe", {}), _recipe_signature(recipe)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointError(f"{resume_from}: the recipe differs from the checkpoint's in {diff}; "
                              f"resume with the same recipe (only {sorted(RESUMABLE_CHANGES)} may change)")

    # --- model and data
    if adapter is None:
        if generator is None:
            from mmalign.generators import load_generator

            generator = load_generator(recipe.generator, **recipe.generator_kwargs)
        adapter = generator.trainable()
    if eval_fn is None and generator is not None:
        eval_fn = default_eval_fn(recipe, generator)
    dataset = _select_data(recipe, read_preferences(recipe.data.path, recipe.data.format, recipe.data.ties,
                                                    recipe.data.limit, recipe.data.resolution))
    cache_dir = recipe.data.cache_dir or os.environ.get("MMALIGN_CACHE_DIR") or str(Path.home() / ".cache" / "mmalign" / "latents")
    data = encode_dataset(dataset, adapter, recipe.generator, cache_dir, progress=recipe.progress and rank == 0)
    release = getattr(adapter, "release_encoders", None)
    if recipe.data.release_encoders and callable(release):
        release()

    torch.manual_seed(recipe.seed)  # LoRA init
    denoiser = adapter.denoiser
    lora_config = None
    if recipe.finetune == "lora":
        _add_lora(recipe, adapter)
        from peft import LoraConfig

        lora_config = LoraConfig(r=recipe.lora.rank, lora_alpha=recipe.lora.alpha,
                                 target_modules=list(recipe.lora.targets or adapter.lora_target_modules))
        reference: Callable[[], Any] = lambda: lora_disabled(denoiser)  # noqa: E731
    else:
        denoiser.requires_grad_(True)
        ref_model = copy.deepcopy(denoiser).requires_grad_(False).eval()
        reference = lambda: swapped_parameters(denoiser, ref_model)  # noqa: E731
    if recipe.gradient_checkpointing:
        if not hasattr(denoiser, "enable_gradient_checkpointing"):
            raise ConfigError(f"gradient_checkpointing: {type(denoiser).__name__} does not support it; set it to false")
        denoiser.enable_gradient_checkpointing()
    denoiser.to(device)
    if recipe.finetune == "full":
        ref_model.to(device)
    denoiser.train()
    params = _trainable(denoiser)
    for p in params.values():  # trainable parameters in fp32 (diffusers cast_training_params)
        p.data = p.data.float()
    lr = recipe.lr * (recipe.batch_size * recipe.grad_accum * world if recipe.scale_lr else 1)
    optimizer = _make_optimizer(recipe, list(params.values()), lr)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(recipe.lr_scheduler, optimizer, num_warmup_steps=recipe.warmup_steps,
                              num_training_steps=recipe.max_steps)
    optimizer = accelerator.prepare_optimizer(optimizer)

    state: dict[str, Any] = {"position": 0, "eval_history": [], "best": None, "best_step": None, "bad_evals": 0,
                             "margins": []}
    step = 0
    if saved is not None:
        weights, opt_state, sched_state, rng, st = saved
        missing = set(params) - set(weights)
        if missing:
            raise CheckpointError(f"{resume_from}: weights lack {sorted(missing)[:3]}…; it belongs to another model or LoRA setup")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name].to(p))
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(sched_state)
        set_rng_state(rng)
        step = int(st["step"])
        state.update({k: st[k] for k in state if k in st})

    out.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(out, step, enabled=accelerator.is_main_process)
    order = _Order(len(data), recipe.seed)
    autocast = accelerator.autocast
    stopped = "max_steps"
    last: dict[str, float] = {}

    def checkpoint() -> None:
        if accelerator.is_main_process:
            save_checkpoint(ckpt_root, step, {n: p for n, p in params.items()}, optimizer, scheduler,
                            {**state, "recipe": _recipe_signature(recipe)}, keep=recipe.keep_checkpoints)
        accelerator.wait_for_everyone()

    def run_eval() -> str | None:
        """Evaluate, update early stopping; a reason to stop or None."""
        denoiser.eval()
        with torch.no_grad():
            metrics = eval_fn(step)
        denoiser.train()
        state["eval_history"].append({"step": step, **metrics})
        log.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        es = recipe.eval.early_stopping
        if es is not None:
            if es.metric not in metrics:
                raise ConfigError(f"eval.early_stopping.metric '{es.metric}' is not among the eval metrics {sorted(metrics)}")
            value = metrics[es.metric]
            if state["best"] is None or value > state["best"] + es.min_delta:
                state.update(best=value, best_step=step, bad_evals=0)
                _save_best(out, params)
            else:
                state["bad_evals"] += 1
                if state["bad_evals"] >= es.patience:
                    return "early_stopping"
        limit = recipe.eval.max_reward_margin
        if limit is not None and state["margins"] and sum(state["margins"]) / len(state["margins"]) > limit:
            return "reward_margin"
        state["margins"] = []
        return None

    if eval_fn is not None and recipe.eval.every and step == 0 and not state["eval_history"]:
        run_eval()
    bar = tqdm(total=recipe.max_steps, initial=step, desc=f"train {recipe.method}", unit="step",
               disable=not (recipe.progress and accelerator.is_main_process))
    t_start = time.perf_counter()
    steps_this_run = 0
    while step < recipe.max_steps:
        parts = []
        for micro in range(recipe.grad_accum):
            index = order.take(state["position"] + rank * recipe.batch_size, recipe.batch_size)
            state["position"] += recipe.batch_size * world
            gen = step_generator(recipe.seed, step, micro, rank)
            loss, metrics = compute_loss(recipe, adapter, data, index, gen, device, reference, autocast)
            if not torch.isfinite(loss):
                where = latest_checkpoint(ckpt_root)
                raise CheckpointError(
                    f"non-finite loss ({float(loss.detach())}) at step {step + 1}, micro-step {micro}; stopped before the update. "
                    f"Last good checkpoint: {where or 'none yet'}. Lower lr/beta, use bf16 instead of fp16, "
                    f"or check the data, then resume with --resume")
            accelerator.backward(loss / recipe.grad_accum)
            parts.append(metrics)
        if world > 1:
            for p in params.values():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        if recipe.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(list(params.values()), recipe.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().float().norm() for p in params.values() if p.grad is not None])))
        if not math.isfinite(grad_norm) and recipe.mixed_precision != "fp16":
            raise CheckpointError(f"non-finite gradient norm at step {step + 1}; stopped before the update. "
                                  f"Last good checkpoint: {latest_checkpoint(ckpt_root) or 'none yet'}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1
        last = _mean_metrics(parts)
        last.update(step=step, grad_norm=grad_norm, lr=scheduler.get_last_lr()[0],
                    pairs_per_s=steps_this_run * recipe.batch_size * recipe.grad_accum * world / (time.perf_counter() - t_start))
        if "reward_margin" in last:
            state["margins"].append(last["reward_margin"])
        log.write(last)
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last.get('implicit_acc', float('nan')):.2f}")
        reason = run_eval() if eval_fn is not None and recipe.eval.every and step % recipe.eval.every == 0 else None
        if reason is not None or (recipe.checkpoint_every and step % recipe.checkpoint_every == 0) or step == recipe.max_steps:
            checkpoint()
        if reason is not None:
            stopped = reason
            break
    bar.close()
    if state["best_step"] is not None and state["best_step"] != step:
        _load_best(out, params)  # with early stopping configured, the best evaluated weights are kept
    final = _write_final(out, recipe, denoiser, params, lora_config) if accelerator.is_main_process else out / "final"
    log.close()
    return TrainResult(out, final, step, stopped, state["best_step"], last, state["eval_history"])


def _save_best(out: Path, params: dict[str, torch.nn.Parameter]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    atomic_write(out / "best.safetensors", lambda tmp: save_file(tensors, str(tmp)))


def _load_best(out: Path, params: dict[str, torch.nn.Parameter]) -> None:
    from safetensors.torch import load_file

    best = load_file(str(out / "best.safetensors"))
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(best[k].to(p))


__all__ = ["train", "TrainResult", "compute_loss", "shared_noise", "step_generator", "lora_disabled",
           "swapped_parameters", "default_eval_fn"]
