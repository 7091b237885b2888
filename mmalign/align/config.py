"""The training recipe schema: one YAML file reproduces one run.

Validated once, at the boundary (STYLE §1 rule 2): an unknown key is a :class:`ConfigError` that
names the file, the dotted key and the nearest valid key, before any work starts. ``--set a.b=c``
overrides are applied to the raw mapping and validated with it. Defaults follow the diffusers
Diffusion-DPO LoRA recipe (``training.md`` §1.6, §7.8).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmalign.errors import ConfigError
from mmalign.paths import shipped_dir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    path: str = Field(description="Preference data: a Pick-a-Pic parquet file/folder or a JSONL manifest (from `mmalign pairs`)")
    format: Literal["auto", "pickapic", "manifest"] = Field("auto", description="Reader: by file suffix, Pick-a-Pic parquet, or JSONL manifest")
    ties: Literal["drop", "keep"] = Field("drop", description="Tied pairs (label 0.5): drop them (official) or keep them as 0.5 labels; never counted as wins")
    resolution: int | None = Field(None, gt=0, description="Resize + centre-crop images/videos to this square size before encoding (None: as stored)")
    limit: int | None = Field(None, gt=0, description="Use at most this many records (for quick runs)")
    ranking_to_pairs: Literal["best-worst", "all"] = Field("best-worst", description="How k-wise rankings become pairs for the pairwise methods")
    prompt_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of pairs trained with the empty prompt (official default 0.2, §1.5)")
    cache_dir: str | None = Field(None, description="Where encoded latents/text embeddings are stored (default: <output_dir>/../.cache/latents)")
    release_encoders: bool = Field(True, description="Release the adapter's VAE/text encoders once the dataset is encoded (if the adapter supports it)")


class LoraConfig(_Strict):
    rank: int = Field(8, gt=0, description="LoRA rank r")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha (scaling alpha/r)")
    targets: list[str] | None = Field(None, description="Target module names; None = the adapter's default (attention projections)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    init: Literal["gaussian", "default"] = Field("gaussian", description="peft init_lora_weights; both start with B = 0, so policy = reference at step 0")


class OptimizerConfig(_Strict):
    name: Literal["adamw", "adamw8bit", "adafactor"] = Field("adamw", description="AdamW (fused on CUDA), bitsandbytes AdamW8bit, or transformers Adafactor (no relative step, no parameter scaling)")
    weight_decay: float = Field(1e-2, ge=0.0, description="Decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon")
    fused: bool | None = Field(None, description="Fused AdamW kernel; None = on when the parameters are on CUDA")


class EarlyStopping(_Strict):
    metric: str = Field("score", description="Eval metric to maximise (e.g. 'score' or 'oracle')")
    patience: int = Field(3, ge=1, description="Stop after this many evaluations without improvement")
    min_delta: float = Field(0.0, ge=0.0, description="Minimum improvement that counts")


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="Evaluate every N optimizer steps on held-out prompts (0 = off)")
    prompts: str = Field("synth:heldout", description="A prompt file (one per line) or 'synth:heldout' (mmalign.synth held-out prompts of the generator's modality)")
    n_prompts: int = Field(16, gt=0, description="Number of held-out prompts")
    seed: int = Field(1234, description="Sampling seed (the same at every evaluation)")
    steps: int | None = Field(None, gt=0, description="Sampling steps (None = generator default)")
    scorer: str | None = Field(None, description="Scorer id whose mean reward is the 'score' metric")
    oracle: bool = Field(False, description="Also report the synthetic-world oracle faithfulness ('oracle') and per-skill accuracy")
    early_stopping: EarlyStopping | None = Field(None, description="Stop when the eval metric stops improving; the best step's weights are kept")
    max_reward_margin: float | None = Field(None, gt=0, description="Stop when the mean implicit reward margin over the last eval period exceeds this (memorisation watch, §6)")


class Recipe(_Strict):
    name: str | None = Field(None, description="Run name (informational)")
    generator: str = Field(description="Generator id or preset for load_generator (e.g. 'synth-sdxl', 'stabilityai/stable-diffusion-xl-base-1.0')")
    generator_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for load_generator")
    data: DataConfig
    method: Literal["diffusion_dpo", "rank_dpo", "lipo", "sft"] = Field("diffusion_dpo", description="Loss: Diffusion-DPO, RankDPO, LiPO-λ or SFT on chosen items")
    beta: float = Field(5000.0, gt=0, description="DPO β (official form with the ½ factor: β = 5000 ≡ diffusers SD1.5's 2500)")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field("sigmoid", description="Diffusion-DPO loss variant (diffusers SD1.5 script)")
    discount_ranks: Literal["psi", "model"] = Field("psi", description="RankDPO DCG discount ranks from ψ (algorithm text) or the model's scores (Figure 2 / LiPO)")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA on the denoiser (reference = adapters disabled) or full fine-tuning (reference = frozen copy)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (finetune=lora)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer")
    lr: float = Field(1e-5, gt=0, description="Learning rate (per sample if scale_lr)")
    scale_lr: bool = Field(False, description="Multiply lr by batch_size × grad_accum × processes (official 1e-8 × 2048, P7)")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field("constant", description="LR schedule (diffusers get_scheduler)")
    warmup_steps: int = Field(0, ge=0, description="Warmup optimizer steps")
    batch_size: int = Field(1, gt=0, description="Pairs (or lists) per process per micro-step")
    grad_accum: int = Field(1, gt=0, description="Micro-steps per optimizer step")
    max_steps: int = Field(100, gt=0, description="Optimizer steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient-norm clip (None = off)")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="accelerate mixed precision for the forward passes; errors and losses stay fp32")
    attention: Literal["auto", "flash", "efficient", "math", "cudnn"] = Field("auto", description="SDPA backend: auto (PyTorch picks), or force one kernel")
    gradient_checkpointing: bool = Field(False, description="Recompute denoiser activations in backward")
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep")
    seed: int = Field(0, description="Seed of data order, noise, timesteps and LoRA init")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda' (accelerate picks the process's device)")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation during training")
    output_dir: str = Field("runs/mmalign", description="Where checkpoints, metrics.jsonl and final weights go")
    progress: bool = Field(True, description="Show progress bars")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.finetune == "full" and "lora" in self.model_fields_set:
            raise ConfigError("recipe: 'lora' settings given with finetune=full; remove them or set finetune: lora")
        if self.eval.early_stopping is not None and self.eval.every == 0:
            raise ConfigError("recipe: eval.early_stopping needs eval.every > 0")
        return self


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        ann = info.annotation
        for sub in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                names += _field_names(sub, prefix + name + ".")
    return names


def _explain(err: ValidationError, where: str) -> ConfigError:
    valid = _field_names(Recipe)
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(k for k in valid if '.' not in k)}"
            lines.append(f"unknown key '{key}'{hint}")
        elif not key:
            lines.append(str(e["msg"]).removeprefix("Value error, ").removeprefix("recipe: "))
        else:
            lines.append(f"'{key}': {e['msg']}")
    return ConfigError(f"{where}: " + "; ".join(lines))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=1e-6")
        key, _, value = item.partition("=")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"--set {item!r}: '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or a shipped recipe by name (``sdxl-diffusion-dpo`` → ``recipes/sdxl-diffusion-dpo.yaml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_dir("recipes") / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    available = sorted(f.stem for f in shipped_dir("recipes").glob("*.yaml"))
    raise ConfigError(f"recipe {name_or_path}: not a file and not a shipped recipe; shipped: {available}")


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    """Validate a recipe (file, shipped name, mapping or :class:`Recipe`) with ``--set`` overrides.

    Relative paths in a recipe resolve against the working directory, as on the command line.
    """
    if isinstance(recipe, Recipe):
        raw, where = recipe.model_dump(), "recipe"
    elif isinstance(recipe, dict):
        raw, where = dict(recipe), "recipe"
    else:
        path = resolve_recipe_path(recipe)
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
    import copy

    raw = apply_overrides(copy.deepcopy(raw), overrides)
    try:
        out = Recipe.model_validate(raw)
    except ValidationError as e:
        raise _explain(e, where) from None
    return out


__all__ = ["Recipe", "DataConfig", "LoraConfig", "OptimizerConfig", "EvalConfig", "EarlyStopping",
           "load_recipe", "apply_overrides", "resolve_recipe_path"]
