"""Shared pieces of the diffusers-backed families: devices, per-item seeds, the batch loop, the
three training objectives (epsilon / v-prediction / flow velocity) and VAE latent scaling.

The objectives are small pure functions so tests can check them against hand-computed values:

* DDPM forward process and v-prediction (Ho et al. 2020, eq. 4; Salimans & Ho 2022, §4 "v"),
  taken from the scheduler's own ``add_noise`` / ``get_velocity``;
* rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 2–3):
  ``x_t = (1 - σ) x0 + σ ε`` with ``σ = t / 1000`` and velocity target ``ε - x0``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mmalign.errors import ConfigError, InputError
from mmalign.devices import resolve_device, resolve_dtype  # noqa: F401  (re-exported)
from mmalign.fileio import atomic_write_json
from mmalign.generators.base import Cond, DiffusionAdapter, Generator
from mmalign.media import AudioBatch, ImageBatch, Media, VideoBatch

#: file next to a saved pipeline that carries mmalign's sampling defaults (steps, guidance, frames, fps)
DEFAULTS_FILE = "mmalign_generator.json"
LORA_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


# --- devices, seeds, prompts -------------------------------------------------------------------


def item_seeds(seed: int, count: int) -> list[int]:
    """One independent seed per output item (SeedSequence of ``(seed, index)``), so an item's noise
    depends only on the run seed and its index, never on the batch it is drawn in."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1) for i in range(count)]


def item_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    gen_device = "cpu" if device.type == "mps" else device
    return [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]


def expand_prompts(prompts: Sequence[str] | str, n: int) -> list[str]:
    """``n`` copies of each prompt, prompt-major."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts given; pass at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is {type(p).__name__}, expected str")
    if n < 1:
        raise InputError(f"n must be >= 1 samples per prompt, got {n}")
    return [p for p in prompts for _ in range(n)]


def read_defaults(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); fix or delete it") from e


def write_defaults(folder: str | Path, defaults: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / DEFAULTS_FILE, defaults, indent=2, sort_keys=True)


# --- the generator around a diffusers pipeline --------------------------------------------------


class DiffusersGenerator(Generator):
    """A diffusers pipeline behind the :class:`Generator` interface.

    Families set ``family``, ``modality``, ``pipeline_class`` and ``defaults`` and implement
    :meth:`_generate` (one batch through the pipeline, returning a tensor in the Media layout).
    """

    family: str
    pipeline_class: type
    defaults: dict[str, Any] = {}

    def __init__(self, pipe: Any, device: torch.device | None = None, defaults: dict[str, Any] | None = None):
        self.pipe = pipe
        self.device = device or pipe.device
        self.defaults = {**type(self).defaults, **(defaults or {})}

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.dtype

    def _generate(self, prompts: list[str], generators: list[torch.Generator], steps: int, guidance: float,
                  **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def _media(self, data: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> Media:
        data = data.float().cpu()
        if self.modality == "image":
            return ImageBatch(data.clamp(0, 1), prompts=prompts, metadata=metadata)
        if self.modality == "video":
            return VideoBatch(data.clamp(0, 1), fps=float(self.defaults.get("fps", 8.0)), prompts=prompts, metadata=metadata)
        return AudioBatch(data.clamp(-1, 1), sample_rate=int(self.sample_rate), prompts=prompts, metadata=metadata)

    def sample(self, prompts: Sequence[str] | str, n: int = 1, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, batch_size: int = 8, progress: bool = True, **kwargs: Any) -> Media:
        """``n`` samples per prompt, prompt-major; item ``i`` uses its own seeded ``torch.Generator``."""
        items = expand_prompts(prompts, n)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        steps = int(steps or self.defaults.get("steps", 30))
        guidance = float(self.defaults.get("guidance", 5.0) if guidance is None else guidance)
        seeds = item_seeds(seed, len(items))
        metadata = [{"seed": s, "run_seed": seed, "prompt_index": i // n, "index": i % n} for i, s in enumerate(seeds)]
        for key, value in self.defaults.items():
            if key in self.call_defaults:
                kwargs.setdefault(key, value)
        self.pipe.set_progress_bar_config(disable=True)
        outs = []
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc=f"sampling {self.family}", disable=not progress or len(starts) < 2):
            batch = items[start : start + batch_size]
            gens = item_generators(seeds[start : start + batch_size], self.device)
            with torch.no_grad():
                outs.append(self._generate(batch, gens, steps, guidance, **kwargs).float().cpu())
        return self._media(torch.cat(outs), items, metadata)

    #: keys of ``defaults`` that are passed on to :meth:`_generate` (e.g. num_frames, height)
    call_defaults: tuple[str, ...] = ()

    def save_pretrained(self, folder: str | Path) -> None:
        """Save the pipeline (``save_pretrained``) plus mmalign's sampling defaults."""
        self.pipe.save_pretrained(folder)
        write_defaults(folder, {"family": self.family, **self.defaults})


# --- training objectives ------------------------------------------------------------------------


def ddpm_training_scheduler(scheduler_config: Any) -> Any:
    """The DDPM scheduler training uses for this model (as the diffusers training scripts do)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(scheduler_config)
    if sched.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"prediction_type {sched.config.prediction_type!r} is not supported for training; "
                          "use 'epsilon' or 'v_prediction' in the scheduler config")
    return sched


def flow_sigmas(t: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    """σ = t / T for flow-matching timesteps t ∈ [0, T) (diffusers passes ``sigma * 1000``)."""
    return t.float() / num_train_timesteps


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def flow_noise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow forward process x_t = (1 − σ)·x0 + σ·ε (Esser et al. 2024, eq. 3)."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * eps


def flow_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Velocity target dx_t/dσ = ε − x0 (Esser et al. 2024, eq. 2; diffusers SD3 training script)."""
    return eps - x0


class LatentAdapter(DiffusionAdapter):
    """Common state of the latent diffusion adapters: the wrapped generator, device and dtype."""

    lora_target_modules_default: list[str] = LORA_ATTENTION

    def __init__(self, generator: DiffusersGenerator):
        self.gen = generator
        self.pipe = generator.pipe
        self.device = generator.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def lora_target_modules(self) -> list[str]:
        return list(self.lora_target_modules_default)

    def _latent_scale(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.pipe.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (latents - shift) * cfg.scaling_factor

    def _encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE-encode ``[N, 3, H, W]`` images in [0, 1] to scaled latents (mode of the posterior)."""
        vae = self.pipe.vae
        x = (pixels.to(self.device, vae.dtype) * 2 - 1)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode()
        return self._latent_scale(latents)


class DDPMAdapter(LatentAdapter):
    """Epsilon or v-prediction on the model's DDPM schedule (``scheduler.add_noise`` / ``get_velocity``)."""

    def __init__(self, generator: DiffusersGenerator):
        super().__init__(generator)
        self.scheduler = ddpm_training_scheduler(self.pipe.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε (Ho et al. 2020, eq. 4)."""
        return self.scheduler.add_noise(latents, noise, t.long().to(latents.device))

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε for epsilon models; v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0 (Salimans & Ho 2022, §4) for v-prediction."""
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, t.long().to(latents.device))


class FlowAdapter(LatentAdapter):
    """Rectified-flow velocity ``ε − x0`` at σ = t/1000 (SD3, Wan)."""

    prediction_type = "flow"
    num_train_timesteps = 1000

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(batch_size, generator=generator) * self.num_train_timesteps

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow_noise(latents, noise, flow_sigmas(t, self.num_train_timesteps))

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flow_target(latents, noise)


def cond_batch(cond: Cond, device: torch.device, dtype: torch.dtype) -> Cond:
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in cond.items()}
