"""The preference-tuning trainer: Diffusion-DPO, RankDPO, LiPO-λ and SFT on any :class:`DiffusionAdapter`,
and reward backpropagation (DRaFT-K, :mod:`mmalign.align.draft`) on any diffusers generator.

:class:`Trainer` reads top to bottom as a run does:

1. :meth:`Trainer.setup` — check what can be checked without data (the optimizer's package, the
   precision the device can run, the attention backend), load the generator, read the preference
   data, encode latents and text conditioning once (:mod:`mmalign.data.cache`) and offload the
   encoders, add LoRA (peft, on ``adapter.denoiser``) or prepare full fine-tuning, build the
   optimizer and LR schedule;
2. :meth:`Trainer.resume` — restore weights, optimizer, schedule and the run state from the latest
   checkpoint (``--resume``);
3. :meth:`Trainer.step` — one optimizer step over ``grad_accum`` micro-batches: one t and one ε per
   record of k items, shared by its k items (official DiffusionDPO ``train.py`` @ 5233e75,
   L1053–1055), per-sample errors in fp32, the method's loss (:mod:`mmalign.align.losses`); for
   ``method: draft``, one sample per prompt with gradients through its last K steps, −reward;
4. :meth:`Trainer.evaluate` — held-out sampling scored by the recipe's scorer and judge, early
   stopping and a reward-margin watch;
5. :meth:`Trainer.save` / :meth:`Trainer.finish` — atomic resumable checkpoints and the final weights.

:func:`train` runs all of them in one call. The reference model is the same denoiser with its LoRA
adapters disabled (``no_grad``) or a frozen copy (full fine-tuning), as in the diffusers SDXL DPO
script (``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py`` @ 58eb52c0).

Every random draw comes from the run: noise, timesteps and prompt dropout from generators seeded
by (seed, step, micro-step), the data order from one seeded by (seed, epoch), the LoRA init and any
dropout from the global RNG forked and seeded for the purpose (:func:`mmalign.rng.owned_rng`).
So a run does not depend on what ran before it (a cache build, an evaluation) and leaves the
caller's RNG as it was, and a run killed and resumed ends with the same weights as an uninterrupted one.
Under ``accelerate launch`` the denoiser runs under ``accelerator.prepare`` (DDP, which averages the
gradients in backward; no sync on the micro-steps before the last), the draws are made for a step's
global batch and each process keeps its share of records, so N processes with ``batch_size`` B train
as one process with N·B (LoRA dropout aside); each process encodes only its shards of the latent
cache (:func:`mmalign.data.cache.encode_dataset`). A ``draft`` run samples through the pipeline, which calls
the bare denoiser, so it averages the gradients over processes itself (:meth:`Trainer._average_grads`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from mmalign.align import losses
from mmalign.align.config import Recipe, load_recipe
from mmalign.align.draft import RewardBackprop
from mmalign.checkpoint import atomic_folder, clean_partial, latest_checkpoint, load_checkpoint, save_checkpoint
from mmalign.data.cache import EncodedData, encode_dataset
from mmalign.data.pairs import Fit, PairDataset, RankingDataset, read_preferences
from mmalign.devices import cast_weights, dtype_name, num_parameters, resolve_dtype
from mmalign.errors import CheckpointError, ConfigError
from mmalign.fileio import atomic_write, atomic_write_text
from mmalign.generators.base import DiffusionAdapter, Generator
from mmalign.rng import owned_rng

#: step → eval metrics (floats); may also return ``"items"``: per-prompt values of ``score`` and ``judge``
#: (the reward-hacking guard's paired comparison with step 0)
EvalFn = Callable[[int], dict[str, Any]]
#: recipe keys that may change between a checkpoint and its resumption
RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "keep_checkpoints", "output_dir", "progress", "eval", "device"}


@dataclass
class TrainResult:
    """What a run produced: its folder, final weights, steps done and why it stopped."""

    output_dir: Path
    final_dir: Path
    steps: int
    stopped: str  # "max_steps" | "early_stopping" | "reward_margin" | "reward_hacking"
    best_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)  # reward-hacking flags of the guard (eval.guard)
    precision: str = "fp32"  # the denoiser's compute dtype (mixed_precision resolved; mmalign.devices.dtype_name)


@dataclass
class TrainState:
    """What a checkpoint must restore besides weights and optimizer: written to ``state.json``."""

    step: int = 0
    position: int = 0  # records consumed (all processes)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    margins: list[float] = field(default_factory=list)  # implicit reward margins since the last evaluation
    reference_items: dict[str, list[float]] | None = None  # step 0's per-prompt score and judge (eval.guard)
    flags: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- noise


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A CPU generator for (seed, step, micro-step, process): stateless, hence resumable."""
    mixed = (((seed * 1_000_003 + step) * 1_009 + micro) * 131 + rank) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _dropout_seed(generator: torch.Generator) -> int:
    """A seed for the global RNG of one micro-step, derived from its generator's seed but not equal to it."""
    return (generator.initial_seed() * 6364136223846793005 + 1442695040888963407) % (2**63 - 1)


def shared_noise(adapter: DiffusionAdapter, latent_shape: Sequence[int], batch: int, k: int,
                 generator: torch.Generator, rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps ``[k·B]`` and noise ``[k·B, ...]`` for B records of k items, item-major.

    Row ``j·B + i`` is item j of record i; all k rows of record i share its t and ε, and each record
    draws its own t. For k = 2 this is the official layout: winners in rows 0…B−1, losers in rows
    B…2B−1 (DiffusionDPO ``train.py`` @ 5233e75, L1014–1016, L1053–1055). With ``rows``, the draws
    are made for all ``batch`` records (a step's global batch) and only ``rows`` of them kept (one
    process's share), so N processes draw what one process with their global batch draws.
    """
    t = adapter.sample_timesteps(batch, generator=generator)
    eps = torch.randn((batch, *latent_shape), generator=generator)
    if rows is not None:
        t, eps = t[rows], eps[rows]
    return t.repeat(k), eps.repeat(k, *([1] * len(latent_shape)))


class DataOrder:
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


# ------------------------------------------------------------------------------------------- the loss


def select_data(recipe: Recipe, dataset: PairDataset | RankingDataset) -> PairDataset | RankingDataset:
    """Rankings for the listwise methods, pairs for the pairwise ones (``data.ranking_to_pairs``); samples
    (rankings of one item) for ``sft`` only."""
    if isinstance(dataset, RankingDataset) and dataset.k == 1:
        if recipe.method != "sft":
            raise ConfigError(f"{dataset.source} holds samples (one item per record), which train only with "
                              f"method: sft; {recipe.method} needs pairs or rankings")
        return dataset
    if recipe.method in ("rank_dpo", "lipo"):
        if recipe.data.top_margin is not None:
            raise ConfigError(f"data.top_margin selects pairs; {recipe.method} trains on whole rankings: drop data.top_margin")
        return dataset.as_rankings() if isinstance(dataset, PairDataset) else dataset
    if isinstance(dataset, RankingDataset):
        dataset = dataset.to_pairs(recipe.data.ranking_to_pairs, recipe.data.ties)
    return dataset if recipe.data.top_margin is None else dataset.top_margin(recipe.data.top_margin)


def compute_loss(recipe: Recipe, adapter: DiffusionAdapter, data: EncodedData, index: torch.Tensor,
                 generator: torch.Generator, device: torch.device, reference: Callable[[], Any],
                 autocast: Callable[[], Any], part: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics of one micro-batch: shared t/ε per record, fp32 errors.

    ``index`` holds the step's global micro-batch (all processes); ``part = (rank, world)`` picks this
    process's equal share, after the random draws (prompt dropout, t, ε) were made for all of it.
    """
    g = len(index)
    if g % part[1]:
        raise ConfigError(f"a global micro-batch of {g} records does not split over {part[1]} processes")
    rows = slice(part[0] * g // part[1], (part[0] + 1) * g // part[1])
    drop = torch.rand(g, generator=generator)[rows] < recipe.data.prompt_dropout if recipe.data.prompt_dropout > 0 else None
    index = index[rows]
    items = data.items[index]
    if recipe.method == "sft":
        items = items[:, :1]
    b, k = items.shape
    x0 = data.latents[items.T.reshape(-1)]  # [k·B, ...], item-major: row j·B + i
    prompt_idx = data.prompts[index]
    if drop is not None:
        prompt_idx = torch.where(drop, torch.full_like(prompt_idx, data.empty_prompt), prompt_idx)
    t, eps = shared_noise(adapter, x0.shape[1:], g, k, generator, rows)
    cond = {name: v[prompt_idx].repeat(k, *([1] * (v.ndim - 1))).to(device) for name, v in data.cond.items()}
    cond.update({name: v[items.T.reshape(-1)].to(device) for name, v in data.media_cond.items()})  # per item
    x0, eps, t = x0.to(device), eps.to(device), t.to(device)
    noisy = adapter.noise(x0, eps, t)
    target = adapter.target(x0, eps, t)
    ref_err = None
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


# ------------------------------------------------------------------------------------- checks and eval


def check_runtime(recipe: Recipe, device: torch.device) -> None:
    """What can be checked before any data is read: the optimizer's package and the device's precision."""
    if recipe.optimizer.name == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("optimizer.name=adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                              "or use --set optimizer.name=adamw")
        if device.type != "cuda":
            raise ConfigError(f"optimizer.name=adamw8bit runs on CUDA, and this run is on {device.type}; "
                              "use --set optimizer.name=adamw")
    if recipe.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"mixed_precision=fp16 needs a CUDA device, and this run is on {device.type}; "
                          "use --set mixed_precision=bf16 or no")
    if recipe.mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision=bf16: this CUDA device does not support bfloat16; use fp16 or no")


def compute_dtype(recipe: Recipe, device: torch.device, denoiser: torch.nn.Module | None = None) -> torch.dtype:
    """The dtype the denoiser computes in: ``mixed_precision`` no → fp32, bf16, fp16, or ``auto``
    (:func:`mmalign.devices.auto_dtype`, weighing the denoiser's parameter count on a CPU; logged)."""
    if recipe.mixed_precision == "no":
        return torch.float32
    params = None if denoiser is None else num_parameters([denoiser])
    return resolve_dtype(recipe.mixed_precision, device, params=params, what="the denoiser (mixed_precision=auto)")


def make_evaluation(recipe: Recipe, generator: Generator) -> EvalFn | None:
    """Held-out evaluation from ``recipe.eval``: sample, then the scorer's and the judge's mean scores.

    The judge (a scorer the data was not built with, e.g. ``synth-oracle``) also logs its per-skill
    details (``judge/<name>``) where the scorer reports any (:meth:`Scorer.details`).
    """
    ev = recipe.eval
    if ev.every == 0:
        return None
    if ev.prompts is None or (ev.scorer is None and ev.judge is None):
        raise ConfigError("eval.every > 0 needs eval.prompts (a prompt file or shipped prompt set) and "
                          "eval.scorer or eval.judge (what to measure)")
    es = ev.early_stopping
    if es is not None and getattr(ev, es.metric) is None:
        raise ConfigError(f"eval.early_stopping.metric={es.metric} needs eval.{es.metric}")
    from mmalign.data.prompts import read_prompts
    from mmalign.scoring import load_scorer

    prompts = read_prompts(ev.prompts, ev.n_prompts, seed=ev.seed)
    scorers = {name: load_scorer(card) for name, card in (("score", ev.scorer), ("judge", ev.judge)) if card is not None}

    def evaluate(step: int) -> dict[str, Any]:
        kw = {} if ev.steps is None else {"steps": ev.steps}
        media = generator.sample(prompts, n=1, seed=ev.seed, progress=False, **kw)
        items = {name: s.score(media, prompts).float().cpu() for name, s in scorers.items()}
        out: dict[str, Any] = {name: float(v.mean()) for name, v in items.items()}
        out["items"] = {name: v.tolist() for name, v in items.items()}
        if "judge" in scorers:
            out.update({f"judge/{k}": float(v) for k, v in scorers["judge"].details(media, prompts).items()})
        return out

    return evaluate


class MetricsLog:
    """Append-only ``metrics.jsonl`` (one line per step; on resume, lines past the checkpoint are cut)."""

    def __init__(self, out: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled, self._tb = out / "metrics.jsonl", enabled, None
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
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the life of the run)
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))

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


# ---------------------------------------------------------------------------------------------- model


def add_lora(recipe: Recipe, adapter: DiffusionAdapter) -> Any:
    """Inject LoRA into ``adapter.denoiser`` (only LoRA weights trainable); returns the peft ``LoraConfig``."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(recipe.lora.targets or adapter.lora_target_modules)
    cfg = LoraConfig(r=recipe.lora.rank, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                     target_modules=targets, init_lora_weights="gaussian" if recipe.lora.init == "gaussian" else True)
    denoiser = adapter.denoiser
    denoiser.requires_grad_(False)
    try:
        inject_adapter_in_model(cfg, denoiser, adapter_name="default")
    except ValueError as e:
        raise ConfigError(f"recipe lora.targets {targets}: {e}; name modules of the denoiser") from e
    for name, p in denoiser.named_parameters():
        p.requires_grad_("lora_" in name)
    if recipe.lora.init_from is not None:
        load_initial_lora(recipe.lora.init_from, denoiser, getattr(adapter, "gen", None))
    return cfg


def load_initial_lora(source: str, denoiser: torch.nn.Module, generator: Any) -> None:
    """Copy the A and B matrices of the LoRA at ``source`` into the injected ``default`` adapter (``lora.init_from``)."""
    from mmalign.generators.lora import check_lora, read_lora

    state = read_lora(source, family=getattr(generator, "family", None))
    check_lora(state, denoiser)
    modules = dict(denoiser.named_modules())
    with torch.no_grad():
        for path, layer in state.layers.items():
            module = modules[path]
            if "default" not in getattr(module, "lora_A", {}):
                raise ConfigError(f"lora.init_from {source}: its layer {path} is not among this recipe's LoRA targets "
                                  f"{sorted(state.layers)[:3]}...; set lora.targets to the LoRA's modules")
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            if a.shape != layer.A.shape or not math.isclose(module.scaling["default"], layer.alpha / layer.rank, rel_tol=1e-6):
                raise ConfigError(f"lora.init_from {source}: layer {path} has rank {layer.rank} and α {layer.alpha:g}, this "
                                  f"recipe's LoRA rank {a.shape[0]} and scaling {module.scaling['default']:g}; set "
                                  "lora.rank and lora.alpha to the LoRA's")
            a.copy_(layer.A.to(a))
            b.copy_(layer.B.to(b))


def make_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    o = recipe.optimizer
    if o.name == "adamw":
        fused = o.fused if o.fused is not None else all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=fused or None)
    if o.name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    from transformers.optimization import Adafactor

    # official SDXL settings (DiffusionDPO train.py @ 5233e75, L667–674): no relative step, no parameter scaling
    return Adafactor(params, lr=lr, weight_decay=o.weight_decay, clip_threshold=1.0,
                     scale_parameter=False, relative_step=False, warmup_init=False)


def _recipe_signature(recipe: Recipe) -> dict[str, Any]:
    return {k: v for k, v in recipe.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}


def _cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _mean_metrics(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    return {k: float(sum(float(p[k]) for p in parts) / len(parts)) for k in parts[0]}


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One training run of ``recipe``; :meth:`fit` runs it, each stage can be called and tested alone.

    ``generator`` / ``adapter`` skip ``load_generator`` (tests, notebooks, the demo); ``eval_fn(step)
    -> metrics`` replaces the recipe's held-out evaluation.
    """

    def __init__(self, recipe: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str] = (),
                 generator: Generator | None = None, adapter: DiffusionAdapter | None = None,
                 eval_fn: EvalFn | None = None) -> None:
        self.recipe = load_recipe(recipe, overrides)  # unknown keys fail here, before any work
        self.generator, self.adapter, self.eval_fn = generator, adapter, eval_fn
        self.out = Path(self.recipe.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.state = TrainState()
        self.log = MetricsLog(self.out, 0, enabled=False)  # opened by fit()

    # --- 1. setup

    def setup(self) -> None:
        """Devices and checks, model, data (encoded once), LoRA or full fine-tuning, optimizer and schedule."""
        from accelerate import Accelerator

        r = self.recipe
        cpu = r.device == "cpu" or (r.device == "auto" and not torch.cuda.is_available())
        check_runtime(r, torch.device("cpu" if cpu else "cuda"))
        # CUDA: accelerate's autocast (and fp16's grad scaler); a CPU's precision is set up below, without it
        amp = "no" if cpu else dtype_name(compute_dtype(r, torch.device("cuda"))).replace("fp32", "no")
        try:
            self.accelerator = Accelerator(mixed_precision=amp, cpu=cpu)
        except RuntimeError as exc:  # e.g. an FSDP / DeepSpeed accelerate config on a machine without accelerators
            raise ConfigError(f"accelerate could not start this run: {exc} FSDP and DeepSpeed (accelerate launch "
                              "--use_fsdp / --use_deepspeed or an accelerate config) need GPUs (or other accelerators); "
                              "on CPUs launch plain data parallel: accelerate launch --multi_gpu --num_processes N") from exc
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

        if self.adapter is None:
            if self.generator is None:
                from mmalign.generators import load_generator

                self.generator = load_generator(r.generator, **r.generator_kwargs)
            self.adapter = self.generator.trainable()
        if self.eval_fn is None and self.generator is not None:
            self.eval_fn = make_evaluation(r, self.generator)
        from mmalign.generators.attention import set_attention_backend

        set_attention_backend(self.adapter.denoiser, r.attention)

        if r.method == "draft":  # prompts and a reward instead of preference data; sampling keeps the encoders
            self.data: EncodedData | RewardBackprop = RewardBackprop(r, self.generator or getattr(self.adapter, "gen", None),
                                                                     self.device)
        else:
            fit = Fit(r.data.resolution, r.data.random_crop, r.data.random_flip)
            dataset = select_data(r, read_preferences(r.data.path, r.data.format, r.data.ties, r.data.limit, fit))
            cache_dir = r.data.cache_dir or os.environ.get("MMALIGN_CACHE_DIR") or str(Path.home() / ".cache" / "mmalign" / "latents")
            self.data = encode_dataset(dataset, self.adapter, r.generator, cache_dir, progress=r.progress and self.rank == 0,
                                       shard_size=r.data.shard_size, part=(self.rank, self.world),
                                       barrier=self.accelerator.wait_for_everyone)
            if r.data.release_encoders:
                self.adapter.release_encoders()

        denoiser = self.adapter.denoiser
        self.lora_config = None
        if r.finetune == "lora":
            with owned_rng(r.seed, self.device):  # LoRA init draws from the global RNG inside peft
                self.lora_config = add_lora(r, self.adapter)
            self.reference: Callable[[], Any] = lambda: lora_disabled(denoiser)
        else:
            denoiser.requires_grad_(True)
            self.ref_model = copy.deepcopy(denoiser).requires_grad_(False).eval().to(self.device)
            self.reference = lambda: swapped_parameters(denoiser, self.ref_model)
        if isinstance(self.data, RewardBackprop):
            self.data.reference = self.reference
        if r.gradient_checkpointing:
            if not hasattr(denoiser, "enable_gradient_checkpointing"):
                raise ConfigError(f"gradient_checkpointing: {type(denoiser).__name__} does not support it; set it to false")
            denoiser.enable_gradient_checkpointing()
        denoiser.to(self.device).train()
        self.params = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
        for p in self.params.values():  # trainable parameters in fp32 (diffusers cast_training_params)
            p.data = p.data.float()
        self.dtype = compute_dtype(r, self.device, denoiser)
        self.autocast: Callable[[], Any] = self.accelerator.autocast
        self.compute_params: dict[str, torch.nn.Parameter] = {}  # the model's low-precision copies of self.params
        if cpu and self.dtype != torch.float32:
            if r.finetune == "lora":  # everything computes in bf16, the optimizer updates fp32 masters
                self.compute_params = self.params
                self.params = {n: torch.nn.Parameter(p.detach().clone()) for n, p in self.params.items()}
                cast_weights(denoiser, self.dtype, scalars=True)
                for module in self.adapter.encoders().values():
                    if module is not None:  # None: released; the encoders in bf16 too, for held-out sampling
                        cast_weights(module, self.dtype)
            else:  # fp32 weights are the trained ones: bf16 only inside the forward
                dtype = self.dtype
                self.autocast = lambda: torch.autocast("cpu", dtype=dtype)
        if self.world > 1 and r.method != "draft":  # DDP (or the accelerate config's FSDP / DeepSpeed): gradients averaged in backward
            self.adapter.forward_module = self.accelerator.prepare_model(denoiser)
        lr = r.lr * (r.batch_size * r.grad_accum * self.world if r.scale_lr else 1)
        from diffusers.optimization import get_scheduler

        optimizer = make_optimizer(r, list(self.params.values()), lr)
        self.scheduler = get_scheduler(r.lr_scheduler, optimizer, num_warmup_steps=r.warmup_steps,
                                       num_training_steps=r.max_steps)
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        self.order = DataOrder(len(self.data), r.seed)

    # --- 2. resume

    def resume(self) -> Path | None:
        """Restore the latest checkpoint (weights, optimizer, schedule, run state); returns it, or None."""
        path = latest_checkpoint(self.ckpt_root)
        if path is None:
            return None
        weights, opt_state, sched_state, saved = load_checkpoint(path)
        if saved.get("recipe") != _recipe_signature(self.recipe):
            old, new = saved.get("recipe", {}), _recipe_signature(self.recipe)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CheckpointError(f"{path}: the recipe differs from the checkpoint's in {diff}; "
                                  f"resume with the same recipe (only {sorted(RESUMABLE_CHANGES)} may change)")
        missing = set(self.params) - set(weights)
        if missing:
            raise CheckpointError(f"{path}: weights lack {sorted(missing)[:3]}…; it belongs to another model or LoRA setup")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(weights[name].to(p))
        self._masters_to_model()
        self.optimizer.load_state_dict(opt_state)
        self.scheduler.load_state_dict(sched_state)
        known = {f for f in TrainState.__dataclass_fields__}
        self.state = TrainState(**{k: v for k, v in saved.items() if k in known})
        return path

    # --- 3. step

    def _grads_to_masters(self) -> None:
        """bf16 LoRA on a CPU: add the model copies' gradients to the fp32 masters' (accumulated in fp32)."""
        for name, p in self.compute_params.items():
            if p.grad is not None:
                master = self.params[name]
                master.grad = p.grad.float() if master.grad is None else master.grad + p.grad.float()
                p.grad = None

    def _average_grads(self) -> None:
        """Average the trainable parameters' gradients over processes, as DDP does in backward: ``method: draft``
        samples through the pipeline, which calls the bare denoiser, never the distributed wrapper."""
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world

    def _save_params(self, path: Path) -> None:
        """The trainable parameters (fp32 masters) to ``path``, atomically; every process writes the same
        weights, so each reads back a complete file without waiting for another."""
        from safetensors.torch import save_file

        tensors = _cpu_tensors(self.params)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))

    def _load_params(self, path: Path) -> None:
        """The trainable parameters from ``path`` (written by :meth:`_save_params`), into masters and model."""
        from safetensors.torch import load_file

        weights = load_file(str(path))
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(weights[k].to(p))
        self._masters_to_model()

    def _masters_to_model(self) -> None:
        """Copy the fp32 masters into the model's bf16 copies (once per step: a LoRA's few parameters;
        Micikevicius et al. 2018, "Mixed Precision Training", §3.1)."""
        with torch.no_grad():
            for name, p in self.compute_params.items():
                p.copy_(self.params[name])

    def step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches per process); returns its metrics."""
        r, st = self.recipe, self.state
        parts = []
        for micro in range(r.grad_accum):
            index = self.order.take(st.position, r.batch_size * self.world)  # the global micro-batch
            st.position += r.batch_size * self.world
            gen = step_generator(r.seed, st.step, micro, 0)  # every process draws the global batch's noise
            # dropout (LoRA or the denoiser's) draws from the global RNG: seed it per micro-step, apart from gen
            sync = micro == r.grad_accum - 1 or self.adapter.forward_module is None
            with owned_rng(_dropout_seed(gen), self.device), \
                    (contextlib.nullcontext() if sync else self.accelerator.no_sync(self.adapter.forward_module)):
                if isinstance(self.data, RewardBackprop):
                    with self.autocast():
                        loss, metrics = self.data.loss(index, gen, part=(self.rank, self.world))
                else:
                    loss, metrics = compute_loss(r, self.adapter, self.data, index, gen, self.device, self.reference,
                                                 self.autocast, part=(self.rank, self.world))
                if not torch.isfinite(loss):
                    raise CheckpointError(
                        f"non-finite loss ({float(loss.detach())}) at step {st.step + 1}, micro-step {micro}; stopped "
                        f"before the update. Last good checkpoint: {latest_checkpoint(self.ckpt_root) or 'none yet'}. "
                        f"Lower lr/beta, use bf16 instead of fp16, or check the data, then resume with --resume")
                self.accelerator.backward(loss / r.grad_accum)
            self._grads_to_masters()
            parts.append(metrics)
        if isinstance(self.data, RewardBackprop) and self.world > 1:
            self._average_grads()
        params = list(self.params.values())
        if r.max_grad_norm is not None:
            grad_norm = float(self.accelerator.clip_grad_norm_(params, r.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().float().norm() for p in params if p.grad is not None])))
        if not math.isfinite(grad_norm) and r.mixed_precision != "fp16":
            raise CheckpointError(f"non-finite gradient norm at step {st.step + 1}; stopped before the update. "
                                  f"Last good checkpoint: {latest_checkpoint(self.ckpt_root) or 'none yet'}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._masters_to_model()
        st.step += 1
        metrics = _mean_metrics(parts)
        metrics.update(step=st.step, grad_norm=grad_norm, lr=self.scheduler.get_last_lr()[0], precision=dtype_name(self.dtype))
        if "reward_margin" in metrics:
            st.margins.append(metrics["reward_margin"])
        return metrics

    # --- 4. evaluate

    def evaluate(self) -> str | None:
        """Evaluate now, update early stopping; returns a reason to stop, or None."""
        r, st = self.recipe, self.state
        denoiser = self.adapter.denoiser
        denoiser.eval()
        with torch.no_grad():
            metrics = self.eval_fn(st.step)
        denoiser.train()
        hacking = self._guard(metrics)
        st.eval_history.append({"step": st.step, **metrics})
        self.log.write({"step": st.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if hacking:
            return "reward_hacking"
        es = r.eval.early_stopping
        if es is not None:
            if es.metric not in metrics:
                raise ConfigError(f"eval.early_stopping.metric '{es.metric}' is not among the eval metrics {sorted(metrics)}")
            value = metrics[es.metric]
            if st.best is None or value > st.best + es.min_delta:
                st.best, st.best_step, st.bad_evals = value, st.step, 0
                self._save_params(self.out / "best.safetensors")
            else:
                st.bad_evals += 1
                if st.bad_evals >= es.patience:
                    return "early_stopping"
        limit = r.eval.max_reward_margin
        if limit is not None and st.margins and sum(st.margins) / len(st.margins) > limit:
            return "reward_margin"
        st.margins = []
        return None

    def _guard(self, metrics: dict[str, Any]) -> bool:
        """The reward-hacking guard (``eval.guard``): pops ``metrics["items"]``, adds ``guard/*`` metrics and
        a flag when the proxy rose while the judge fell, or the judge collapsed (vs step 0). True: stop (``guard.stop``), with the
        weights of the last unflagged evaluation restored."""
        from mmalign.align.guard import divergence

        guard, st = self.recipe.eval.guard, self.state
        items = metrics.pop("items", None)
        if guard is None or not items or not {"score", "judge"} <= items.keys():
            return False
        snapshot = self.out / "unflagged.safetensors"
        if st.reference_items is None and st.step == 0:
            st.reference_items = items
            flagged = False
        elif st.reference_items is None:  # resumed from a run without a step-0 evaluation: nothing to compare with
            return False
        else:
            d = divergence(st.reference_items, items, guard, st.step, seed=self.recipe.seed)
            flagged = d["flagged"]
            metrics.update({"guard/proxy_delta": d["proxy"][0], "guard/judge_delta": d["judge"][0], "guard/flagged": float(flagged)})
        if not flagged:
            if guard.stop:
                self._save_params(snapshot)
            return False
        st.flags.append({k: d[k] for k in ("step", "kind", "proxy", "judge", "message")})
        tqdm.write(f"warning: {d['message']}")
        if not guard.stop:
            return False
        self.accelerator.wait_for_everyone()
        self._load_params(snapshot)
        st.best_step = None  # the restored weights are final; no early-stopping swap
        return True

    # --- 5. save

    def save(self) -> None:
        """A resumable checkpoint of the current step (main process writes; all wait)."""
        if self.accelerator.is_main_process:
            state = {**asdict(self.state), "recipe": _recipe_signature(self.recipe)}
            save_checkpoint(self.ckpt_root, self.state.step, self.params, self.optimizer, self.scheduler, state,
                            keep=self.recipe.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def finish(self) -> Path:
        """Keep the best evaluated weights (with early stopping) and write ``final/`` atomically.

        A LoRA run's ``final/`` is a LoRA folder (:func:`mmalign.generators.lora.write_lora_files`):
        ``pytorch_lora_weights.safetensors`` in diffusers' format, so ``pipe.load_lora_weights(final)``
        attaches it (peft's ``adapter_model.safetensors`` + ``adapter_config.json`` for a family whose
        pipeline has no LoRA loader, e.g. Stable Audio), and ``mmalign_lora.json``. A full fine-tune's is the
        whole pipeline (``save_pretrained`` + ``mmalign_generator.json``), which ``from_pretrained`` and
        ``load_generator`` open; a bare adapter without a generator leaves ``denoiser.safetensors``. Both
        hold the resolved ``recipe.yaml``.
        """
        from safetensors.torch import save_file

        if self.state.best_step is not None and self.state.best_step != self.state.step:
            self._load_params(self.out / "best.safetensors")
        for name, p in self.compute_params.items():  # the model ends with the fp32 masters (saved exactly)
            p.data = self.params[name].detach().clone()
        final = self.out / "final"
        if not self.accelerator.is_main_process:
            return final
        denoiser, recipe = self.adapter.denoiser, self.recipe
        generator = self.generator or getattr(self.adapter, "gen", None)

        def write(tmp: Path) -> None:
            if recipe.finetune == "lora":
                from mmalign.generators.lora import lora_from_model, write_lora_files

                state = lora_from_model(denoiser, "default", family=getattr(generator, "family", None),
                                        prefix=getattr(generator, "denoiser_name", "unet"))
                write_lora_files(tmp, state, {"base": recipe.generator, "method": recipe.method,
                                              "steps": self.state.step, "recipe": "recipe.yaml",
                                              "precision": dtype_name(self.dtype)})
            elif hasattr(generator, "save_pretrained"):
                generator.save_pretrained(tmp)
            else:
                save_file(_cpu_tensors(denoiser.state_dict()), str(tmp / "denoiser.safetensors"))
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")

        return atomic_folder(final, write)

    # --- the run

    def fit(self, resume: bool = False) -> TrainResult:
        """setup → (resume) → step / evaluate / save until ``max_steps`` or a stop → finish."""
        r = self.recipe
        clean_partial(self.ckpt_root)
        if not resume and latest_checkpoint(self.ckpt_root) is not None:
            raise ConfigError(f"{self.out} already holds checkpoints; pass --resume to continue that run or choose another output_dir")
        self.setup()
        if resume:
            self.resume()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.out, self.state.step, enabled=self.accelerator.is_main_process)
        evaluating = self.eval_fn is not None and r.eval.every > 0
        if evaluating and self.state.step == 0 and not self.state.eval_history:
            self.evaluate()
        bar = tqdm(total=r.max_steps, initial=self.state.step, desc=f"train {r.method}", unit="step",
                   disable=not (r.progress and self.accelerator.is_main_process))
        t_start, steps_this_run, stopped, last = time.perf_counter(), 0, "max_steps", {}
        while self.state.step < r.max_steps:
            last = self.step()
            steps_this_run += 1
            last["pairs_per_s"] = steps_this_run * r.batch_size * r.grad_accum * self.world / (time.perf_counter() - t_start)
            self.log.write(last)
            bar.update(1)
            shown = {"reward": f"{last['reward']:.4f}"} if "reward" in last else {"acc": f"{last.get('implicit_acc', float('nan')):.2f}"}
            bar.set_postfix(loss=f"{last['loss']:.4f}", **shown)
            step = self.state.step
            reason = self.evaluate() if evaluating and step % r.eval.every == 0 else None
            if reason is not None or (r.checkpoint_every and step % r.checkpoint_every == 0) or step == r.max_steps:
                self.save()
            if reason is not None:
                stopped = reason
                break
        bar.close()
        final = self.finish()
        self.log.close()
        return TrainResult(self.out, final, self.state.step, stopped, self.state.best_step, last, self.state.eval_history,
                           self.state.flags, dtype_name(self.dtype))


def train(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: Sequence[str] = (),
    resume: bool = False,
    adapter: DiffusionAdapter | None = None,
    generator: Generator | None = None,
    eval_fn: EvalFn | None = None,
) -> TrainResult:
    """Train per ``recipe`` (a YAML path, shipped name, mapping or :class:`Recipe`) with ``--set`` overrides.

    The one-call API around :class:`Trainer`; see its docstring for ``adapter``, ``generator`` and ``eval_fn``.
    """
    return Trainer(recipe, overrides, generator=generator, adapter=adapter, eval_fn=eval_fn).fit(resume=resume)


__all__ = ["train", "Trainer", "TrainResult", "TrainState", "compute_loss", "shared_noise", "step_generator",
           "lora_disabled", "swapped_parameters", "make_evaluation", "check_runtime", "DataOrder"]
