"""The training recipe schema: one YAML file reproduces one run.

A :class:`Recipe` is a :class:`~mmalign.cards.Card`: loaded by the one card loader, validated once
at the boundary, ``--set a.b=c`` overrides applied to the raw mapping and validated with it. An
unknown key, a bad value or a missing key is one :class:`ConfigError` naming the file and the dotted
key, before any work starts. Defaults follow the Diffusion-DPO LoRA recipe of diffusers
(``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py`` @ 58eb52c0) and the
official code (SalesforceAIResearch/DiffusionDPO ``train.py`` @ 5233e75).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from mmalign.cards import Card, apply_overrides, load_card, validate
from mmalign.errors import ConfigError


#: attention backends: the one vocabulary of ``mmalign.generators.attention.BACKENDS``
Attention = Literal["sdpa", "math", "flash", "efficient", "cudnn", "xformers"]


def check_recipe_kind(data: Any, expected: str) -> Any:
    """A training recipe has ``data``, a SELMA recipe ``skills``: one given to the other command is a ConfigError
    naming the right command (``expected``: ``"train"`` or ``"selma"``); ``data`` is returned unchanged."""
    if isinstance(data, dict):
        kind = "selma" if "skills" in data else "train" if "data" in data else expected
        if kind != expected:
            what = "a SELMA recipe (it has 'skills')" if kind == "selma" else "a training recipe (it has 'data' and no 'skills')"
            raise ConfigError(f"this is {what}; run it with `mmalign {kind}`, not `mmalign {expected}`")
    return data


class DataConfig(Card):
    path: str = Field(description="Preference data: a Pick-a-Pic parquet file or folder of shards, a datasets hub id (e.g. yuvalkirstain/pickapic_v2, from the local cache), or a JSONL manifest of pairs, rankings or samples (from `mmalign pairs`). For method: draft, the training prompts: a text file (one per line) or a shipped prompt set")
    format: Literal["auto", "pickapic", "manifest"] = Field("auto", description="Reader: by file suffix, Pick-a-Pic parquet, or JSONL manifest")
    ties: Literal["drop", "keep"] = Field("drop", description="Tied pairs (label 0.5): drop them (official train.py) or keep them as 0.5 labels; never counted as wins")
    resolution: int | None = Field(None, gt=0, description="Resize + crop images/videos to this square size before encoding (None: as stored)")
    random_crop: bool = Field(False, description="Crop at a random offset instead of the centre (diffusers SDXL scripts without --center_crop); fixed per image, so the cache stays valid")
    random_flip: bool = Field(False, description="Flip half of the images horizontally (--random_flip of the diffusers SDXL scripts); fixed per image")
    limit: int | None = Field(None, gt=0, description="Use at most this many records (for quick runs)")
    ranking_to_pairs: Literal["best-worst", "all"] = Field("best-worst", description="How k-wise rankings become pairs for the pairwise methods")
    top_margin: float | None = Field(None, gt=0.0, le=1.0, description="Train on this fraction of the pairs, those whose chosen item beat the rejected one by the largest margin (the raw score gap `mmalign pairs` writes; for rankings, the score gap); None = all pairs")
    prompt_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of records trained with the empty prompt (the official train.py uses 0.2 for SDXL)")
    cache_dir: str | None = Field(None, description="Where encoded latents/text embeddings are stored (default: $MMALIGN_CACHE_DIR or ~/.cache/mmalign/latents)")
    shard_size: int = Field(1024, gt=0, description="Unique media items (and prompts) per shard of the latent cache; under accelerate each process encodes its own shards")
    release_encoders: bool = Field(True, description="Offload the VAE and text encoders from the accelerator once the dataset is encoded")


class LoraConfig(Card):
    rank: int = Field(8, gt=0, description="LoRA rank r")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha (scaling alpha/r)")
    targets: list[str] | None = Field(None, description="Target module names; None = the adapter's default (attention projections)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    init: Literal["gaussian", "default"] = Field("gaussian", description="peft init_lora_weights; both start with B = 0, so policy = reference at step 0")
    init_from: str | None = Field(None, description="Start from this LoRA (a final/ folder or .safetensors of the same targets and rank) instead of B = 0; the reference stays the base model")


class RewardConfig(Card):
    """Reward backpropagation through the sampler (``method: draft``; Clark et al. 2024, DRaFT-K)."""

    scorer: str = Field(description="Differentiable scorer id or card whose reward is maximised (e.g. synth-hps); the guard's proxy should be the same")
    grad_steps: int = Field(1, gt=0, description="K of DRaFT-K: the reward's gradient flows through the last K sampling steps (earlier steps are detached)")
    steps: int | None = Field(None, gt=0, description="Sampling steps of each training sample (None: the generator's default)")
    guidance: float | None = Field(None, ge=0, description="Classifier-free guidance scale while training (None: the generator's default)")
    kl_weight: float = Field(0.0, ge=0, description="DPOK's KL regulariser (Fan et al. 2023: the KL to the reference bounded by its per-step terms, ∝ ‖ε_θ − ε_ref‖² for Gaussian steps): adds kl_weight · mean ‖ε_θ − ε_ref‖² over the last grad_steps steps, ε_ref the reference's prediction at the same input (one more no-grad denoiser call for each of the policy's in those steps); 0 = off")


class OptimizerConfig(Card):
    name: Literal["adamw", "adamw8bit", "adafactor"] = Field("adamw", description="AdamW (fused on CUDA), bitsandbytes AdamW8bit (CUDA), or transformers Adafactor (no relative step, no parameter scaling)")
    weight_decay: float = Field(1e-2, ge=0.0, description="Decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon")
    fused: bool | None = Field(None, description="Fused AdamW kernel; None = on when the parameters are on CUDA")


class EarlyStopping(Card):
    metric: Literal["score", "judge"] = Field("score", description="Eval metric to maximise: the scorer's mean reward ('score') or the judge's ('judge')")
    patience: int = Field(3, ge=1, description="Stop after this many evaluations without improvement")
    min_delta: float = Field(0.0, ge=0.0, description="Minimum improvement that counts")


class GuardConfig(Card):
    """Reward-hacking guard (:mod:`mmalign.align.guard`): the proxy rises while the held-out judge falls, or the judge collapses."""

    level: float = Field(0.9, gt=0, lt=1, description="Two-sided level of the paired bootstrap CIs over eval prompts (0.9: each side one-sided 95%)")
    proxy_rise: float = Field(0.0, ge=0, description="The proxy (eval.scorer) counts as rising when its CI vs step 0 lies above this")
    judge_fall: float = Field(0.0, ge=0, description="The judge (eval.judge) counts as falling when its CI vs step 0 lies below minus this")
    collapse: float | None = Field(0.05, gt=0, description="Also flag a judge that fell by more than this whatever the proxy did (its CI below minus this): the model is breaking; null = flag only divergence")
    stop: bool = Field(False, description="Stop the run when flagged and keep the weights of the last evaluation that was not")


class EvalConfig(Card):
    every: int = Field(0, ge=0, description="Evaluate every N optimizer steps on held-out prompts (0 = off)")
    prompts: str | None = Field(None, description="Prompt file (one per line) or the name of a shipped prompt set (e.g. 'synth-image-heldout')")
    n_prompts: int | None = Field(None, gt=0, description="None: every prompt of the file, in order; N: N prompts drawn from it with eval.seed (with replacement)")
    seed: int = Field(1234, description="Seed of the prompt draw and of sampling (the same at every evaluation)")
    steps: int | None = Field(None, gt=0, description="Sampling steps (None = generator default)")
    scorer: str | None = Field(None, description="Scorer id whose mean reward is the 'score' metric (the reward the data was built with)")
    judge: str | None = Field(None, description="A second scorer id ('judge' metric, e.g. synth-oracle), never used to build the data; its per-skill details are logged too")
    early_stopping: EarlyStopping | None = Field(None, description="Stop when the eval metric stops improving; the best step's weights are kept")
    max_reward_margin: float | None = Field(None, gt=0, description="Stop when the mean implicit reward margin over the last eval period exceeds this (a memorisation watch)")
    guard: GuardConfig | None = Field(default_factory=GuardConfig, description="Flag reward hacking (needs eval.scorer and eval.judge): each evaluation vs step 0, per prompt; null = off")

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if self.early_stopping is not None and self.every == 0:
            raise ConfigError("eval.early_stopping needs eval.every > 0")
        return self


class Recipe(Card):
    name: str | None = Field(None, description="Run name (informational)")
    generator: str = Field(description="Generator id or preset for load_generator (e.g. 'synth-sdxl', 'stabilityai/stable-diffusion-xl-base-1.0')")
    generator_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for load_generator")
    data: DataConfig
    method: Literal["diffusion_dpo", "rank_dpo", "lipo", "sft", "draft"] = Field("diffusion_dpo", description="Loss: Diffusion-DPO, RankDPO, LiPO-λ, SFT on chosen items, or DRaFT-K reward backpropagation through the sampler (needs 'reward'; data.path holds prompts)")
    reward: RewardConfig | None = Field(None, description="The differentiable reward of method: draft")
    beta: float = Field(5000.0, gt=0, description="DPO β in the official form with the ½ factor (Wallace et al. 2024, eq. 14; β = 5000 ≡ the diffusers SD1.5 script's 2500)")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field("sigmoid", description="Diffusion-DPO loss variant (diffusers train_diffusion_dpo.py)")
    discount_ranks: Literal["psi", "model"] = Field("psi", description="RankDPO DCG discount ranks from ψ (Karthik et al. 2024, Algorithm 1) or the model's scores (Figure 2 / LiPO)")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA on the denoiser (reference = adapters disabled) or full fine-tuning (reference = frozen copy)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (finetune=lora)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer")
    lr: float = Field(1e-5, gt=0, description="Learning rate (per sample if scale_lr)")
    scale_lr: bool = Field(False, description="Multiply lr by batch_size × grad_accum × processes (official SDXL: 1e-8 × 2048)")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field("constant", description="LR schedule (diffusers get_scheduler)")
    warmup_steps: int = Field(0, ge=0, description="Warmup optimizer steps")
    batch_size: int = Field(1, gt=0, description="Pairs (or lists) per process per micro-step")
    grad_accum: int = Field(1, gt=0, description="Micro-steps per optimizer step")
    max_steps: int = Field(100, gt=0, description="Optimizer steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient-norm clip (None = off)")
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = Field("auto", description="Compute precision of the denoiser's forward passes; trainable weights (fp32 masters), errors and losses stay fp32. no = fp32; bf16; fp16 (CUDA); auto = bf16 on a CUDA device that supports it and on a CPU with AMX/AVX512-BF16 for a denoiser of ≥ 10M parameters, else fp32 (mmalign.devices.auto_dtype). CUDA: accelerate's autocast; CPU LoRA runs: the denoiser cast to bf16 once and fp32 master copies of the LoRA weights for the optimizer (autocast, and fp32 LoRA layers on a bf16 base, are slower on CPUs: benchmarks/bench_precision.py); CPU full fine-tuning: autocast")
    attention: Attention = Field("sdpa", description="Attention backend of the denoiser: sdpa (PyTorch picks the kernel), or force math / flash / efficient / cudnn / xformers")
    gradient_checkpointing: bool = Field(False, description="Recompute denoiser activations in backward")
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep")
    seed: int = Field(0, description="Seed of data order, noise, timesteps, prompt dropout and LoRA init")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda' (accelerate picks the process's device)")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation during training")
    output_dir: str = Field("runs/mmalign", description="Where checkpoints, metrics.jsonl and final weights go")
    progress: bool = Field(True, description="Show progress bars")

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, data: Any) -> Any:
        return check_recipe_kind(data, "train")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.finetune == "full" and "lora" in self.model_fields_set:
            raise ConfigError("'lora' settings given with finetune=full; remove them or set finetune: lora")
        if (self.method == "draft") != (self.reward is not None):
            raise ConfigError("method: draft needs 'reward' (reward.scorer: the differentiable scorer to maximise)"
                              if self.method == "draft" else
                              f"'reward' is the reward of method: draft; {self.method} learns from data.path: remove 'reward'")
        return self


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    """Validate a recipe (file, shipped name, mapping or :class:`Recipe`) with ``--set`` overrides.

    Relative paths in a recipe resolve against the working directory, as on the command line.
    """
    if isinstance(recipe, (Recipe, dict)):
        raw = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
        return validate(apply_overrides(raw, overrides, Recipe, where="recipe"), Recipe, where="recipe")
    return load_card(recipe, Recipe, kind="recipes", overrides=overrides)


__all__ = ["Recipe", "DataConfig", "LoraConfig", "RewardConfig", "OptimizerConfig", "EvalConfig", "EarlyStopping", "load_recipe"]
