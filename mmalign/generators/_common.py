"""Shared pieces of the generator families: per-item seeds, the sampling defaults sidecar
(:class:`GeneratorDefaults`), the one sampling call of every diffusers pipeline
(:class:`DiffusersGenerator`), the three training objectives (epsilon / v-prediction / flow
velocity) and VAE latent scaling.

The objectives are small pure functions so tests can check them against hand-computed values:

* DDPM forward process and v-prediction (Ho et al. 2020, eq. 4; Salimans & Ho 2022, §4 "v"),
  taken from the scheduler's own ``add_noise`` / ``get_velocity``;
* rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 2–3):
  ``x_t = (1 - σ) x0 + σ ε`` with ``σ = t / 1000`` and velocity target ``ε - x0``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from pydantic import ConfigDict, Field
from tqdm.auto import tqdm

from mmalign.cards import Card, validate
from mmalign.devices import empty_cache
from mmalign.errors import ConfigError, InputError, MMAlignError
from mmalign.fileio import atomic_write_json
from mmalign.generators.base import Cond, DiffusionAdapter, Generator
from mmalign.generators.lora import LoraSpec, LoraState
from mmalign.media import AudioBatch, ImageBatch, Media, VideoBatch

#: file next to a saved pipeline that carries mmalign's sampling defaults (:class:`GeneratorDefaults`)
DEFAULTS_FILE = "mmalign_generator.json"
LORA_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
#: the field of a diffusers pipeline's output that holds the media, by modality
PIPELINE_OUTPUT = {"image": "images", "video": "frames", "audio": "audios"}


# --- devices, seeds, prompts -------------------------------------------------------------------


def item_seeds(seed: int, count: int, start: int = 0) -> list[int]:
    """One independent seed per output item (SeedSequence of ``(seed, index)``) for items ``start …
    start + count − 1``, so an item's noise depends only on the run seed and its index, never on the
    batch (or the process) it is drawn in."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1)
            for i in range(start, start + count)]


def item_plan(seed: int, n: int, count: int, first_prompt: int = 0) -> tuple[list[int], list[dict[str, int]]]:
    """Seeds and metadata of ``count`` prompt-major items, ``n`` per prompt, whose first prompt is
    prompt ``first_prompt`` of the whole run (a process sampling a slice of one run passes its offset)."""
    start = first_prompt * n
    seeds = item_seeds(seed, count, start)
    return seeds, [{"seed": s, "run_seed": seed, "prompt_index": (start + i) // n, "index": (start + i) % n}
                   for i, s in enumerate(seeds)]


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


class GeneratorDefaults(Card):
    """``mmalign_generator.json``: the sampling defaults saved next to a model (every key optional).

    ``family`` is informative (the family is detected from the model's own config); the other keys
    override the family's defaults and those a pipeline takes are passed on to it (``call_defaults``).
    """

    model_config = ConfigDict(strict=True)  # a JSON file: 20 is an int, "20" is not

    family: str | None = Field(None, description="Generator family that wrote the folder")
    steps: int | None = Field(None, ge=1, description="Denoising steps")
    guidance: float | None = Field(None, ge=0, description="Classifier-free guidance scale")
    height: int | None = Field(None, ge=1, description="Output height in pixels")
    width: int | None = Field(None, ge=1, description="Output width in pixels")
    num_frames: int | None = Field(None, ge=1, description="Frames per video")
    fps: float | None = Field(None, gt=0, description="Frame rate of the sampled videos")
    max_sequence_length: int | None = Field(None, ge=1, description="Text tokens of the T5 encoder (SD3, Wan)")
    audio_end_in_s: float | None = Field(None, gt=0, description="Seconds of audio (Stable Audio)")
    max_new_tokens: int | None = Field(None, ge=1, description="Audio-token frames to generate (MusicGen)")


def read_json_object(path: Path, error: type[MMAlignError], fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (saying ``fix``) when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: not valid JSON ({e}); {fix}") from e
    if not isinstance(data, dict):
        raise error(f"{path}: must be a JSON object, got {type(data).__name__}; {fix}")
    return data


def read_defaults(folder: str | Path) -> dict[str, Any]:
    """The validated sampling defaults saved in ``folder`` (``{}`` when it has no :data:`DEFAULTS_FILE`)."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    data = read_json_object(path, ConfigError, "fix or delete it")
    return validate(data, GeneratorDefaults, where=str(path)).model_dump(exclude_none=True)


def write_defaults(folder: str | Path, defaults: dict[str, Any]) -> None:
    """Validate ``defaults`` (a :class:`GeneratorDefaults`) and write them to ``folder``/:data:`DEFAULTS_FILE`."""
    path = Path(folder) / DEFAULTS_FILE
    checked = validate(dict(defaults), GeneratorDefaults, where=str(path))
    atomic_write_json(path, checked.model_dump(exclude_none=True), indent=2, sort_keys=True)


# --- the generator around a diffusers pipeline --------------------------------------------------


class DiffusersGenerator(Generator):
    """A diffusers pipeline behind the :class:`Generator` interface.

    A family names itself in its class statement (``family=``, ``modality=``) and declares
    ``pipeline_class``, ``adapter_class``, ``defaults`` and, where they differ, ``call_defaults`` and
    ``denoiser_name``; sampling, saving and :meth:`trainable` are shared.
    """

    pipeline_class: type
    adapter_class: type[LatentAdapter]
    defaults: dict[str, Any] = {}
    #: keys of ``defaults`` passed on to the pipeline call (e.g. num_frames, height)
    call_defaults: tuple[str, ...] = ("height", "width")
    #: the pipeline component that denoises (and that training adapts)
    denoiser_name: str = "unet"

    def __init__(self, pipe: Any, device: torch.device | None = None, defaults: dict[str, Any] | None = None):
        self.pipe = pipe
        self.device = device or pipe.device
        self.defaults = {**type(self).defaults, **(defaults or {})}
        self.released: list[str] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.dtype

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    def trainable(self) -> LatentAdapter:
        return self.adapter_class(self)

    def encoders(self) -> dict[str, torch.nn.Module]:
        """Every pipeline module but the denoiser: the VAE and text encoders (and Stable Audio's projection
        model, AnimateDiff's motion adapter, whose weights the UNet holds a copy of)."""
        return {name: part for name, part in self.pipe.components.items()
                if isinstance(part, torch.nn.Module) and name != self.denoiser_name}

    def release_encoders(self) -> None:
        """Move :meth:`encoders` to CPU and free the accelerator's cache (on CPU nothing moves);
        :meth:`sample` brings them back while it runs."""
        if self.device.type == "cpu":
            return
        self.released = list(self.encoders())
        for module in self.encoders().values():
            module.to("cpu")
        empty_cache(self.device)

    @contextlib.contextmanager
    def _encoders_on_device(self) -> Iterator[None]:
        """Bring released modules back to :attr:`device` for the duration of the block."""
        for name in self.released:
            getattr(self.pipe, name).to(self.device)
        try:
            yield
        finally:
            if self.released:
                self.release_encoders()

    def _generate(self, prompts: list[str], generators: list[torch.Generator], steps: int, guidance: float,
                  **kwargs: Any) -> torch.Tensor:
        """One batch through the pipeline, as a tensor in the :class:`Media` layout of :attr:`modality`."""
        out = self.pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                        output_type="pt", **kwargs)
        return getattr(out, PIPELINE_OUTPUT[self.modality])

    def sample_differentiable(self, prompts: Sequence[str], generators: Sequence[torch.Generator], grad_steps: int,
                              steps: int | None = None, guidance: float | None = None) -> Media:
        """One batch through the pipeline with autograd on, the latents detached after every step but the
        last ``grad_steps`` (DRaFT-K truncation, Clark et al. 2024, "Directly Fine-Tuning Diffusion Models on
        Differentiable Rewards", §4): the reward's gradient reaches the denoiser through those steps only."""
        steps = int(steps or self.defaults.get("steps", 30))
        if not 1 <= grad_steps <= steps:
            raise ConfigError(f"grad_steps must be between 1 and the {steps} sampling steps, got {grad_steps}")
        guidance = float(self.defaults.get("guidance", 5.0) if guidance is None else guidance)
        # diffusers wraps __call__ in torch.no_grad(); its undecorated function samples with gradients
        call = getattr(type(self.pipe).__call__, "__wrapped__", None)
        params = inspect.signature(call).parameters if call is not None else {}

        def cut_after(i: int) -> bool:
            """Whether step i's output is cut from the graph (it feeds the last ``grad_steps`` steps only from
            then on); if so, also cut the earlier predictions a multistep solver keeps (DPM-Solver's
            ``model_outputs``, UniPC's ``last_sample``), through which the gradient would reach earlier steps."""
            if i >= steps - grad_steps:
                return False
            sched = self.pipe.scheduler
            if isinstance(getattr(sched, "model_outputs", None), list):
                sched.model_outputs = [o.detach() if torch.is_tensor(o) else o for o in sched.model_outputs]
            if torch.is_tensor(getattr(sched, "last_sample", None)):
                sched.last_sample = sched.last_sample.detach()
            return True

        if "callback_on_step_end" in params:
            def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                if cut_after(i):
                    tensors["latents"] = tensors["latents"].detach()
                return tensors

            hooks: dict[str, Any] = {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]}
        elif "callback" in params:  # older pipelines (Stable Audio) call callback(i, t, latents) and ignore what it returns
            def legacy(i: int, t: Any, latents: torch.Tensor) -> None:
                if cut_after(i):
                    latents.detach_()  # in place: the pipeline's own tensor leaves the graph

            hooks = {"callback": legacy, "callback_steps": 1}
        else:
            raise ConfigError(f"{type(self.pipe).__name__} cannot sample with truncated gradients: reward "
                              "backpropagation needs a no_grad-wrapped __call__ that takes callback_on_step_end or callback")
        kwargs = {k: v for k, v in self.defaults.items() if k in self.call_defaults}
        self.pipe.set_progress_bar_config(disable=True)
        with torch.enable_grad(), self._encoders_on_device():
            out = call(self.pipe, list(prompts), num_inference_steps=steps, guidance_scale=guidance,
                       generator=list(generators), output_type="pt", **hooks, **kwargs)
        return self._media(getattr(out, PIPELINE_OUTPUT[self.modality]), list(prompts), [{} for _ in prompts])

    def _media(self, data: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> Media:
        data = data.float().cpu()
        if self.modality == "image":
            return ImageBatch(data.clamp(0, 1), prompts=prompts, metadata=metadata)
        if self.modality == "video":
            return VideoBatch(data.clamp(0, 1), fps=float(self.defaults.get("fps", 8.0)), prompts=prompts, metadata=metadata)
        return AudioBatch(data.clamp(-1, 1), sample_rate=int(self.sample_rate), prompts=prompts, metadata=metadata)

    def sample(self, prompts: Sequence[str] | str, n: int = 1, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, batch_size: int = 8, progress: bool = True, first_prompt: int = 0,
               **kwargs: Any) -> Media:
        """``n`` samples per prompt, prompt-major; item ``i`` uses its own seeded ``torch.Generator``.
        ``first_prompt``: the index of ``prompts[0]`` in a larger run split across processes (same
        noise as the whole run). ``kwargs`` go to the pipeline call, over the ``call_defaults`` of :attr:`defaults`."""
        items = expand_prompts(prompts, n)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        steps = int(steps or self.defaults.get("steps", 30))
        guidance = float(self.defaults.get("guidance", 5.0) if guidance is None else guidance)
        seeds, metadata = item_plan(seed, n, len(items), first_prompt)
        for key, value in self.defaults.items():
            if key in self.call_defaults:
                kwargs.setdefault(key, value)
        self.pipe.set_progress_bar_config(disable=True)
        outs = []
        starts = range(0, len(items), batch_size)
        with self._encoders_on_device():
            for start in tqdm(starts, desc=f"sampling {self.family}", disable=not progress or len(starts) < 2):
                batch = items[start : start + batch_size]
                gens = item_generators(seeds[start : start + batch_size], self.device)
                with torch.no_grad():
                    outs.append(self._generate(batch, gens, steps, guidance, **kwargs).float().cpu())
        return self._media(torch.cat(outs), items, metadata)

    def save_pretrained(self, folder: str | Path) -> None:
        """Save the pipeline (``save_pretrained``) plus mmalign's sampling defaults."""
        self.pipe.save_pretrained(folder)
        write_defaults(folder, {"family": self.family, **self.defaults})

    def load_loras(self, loras: Sequence[LoraSpec], local_files_only: bool | None = None) -> list[str]:
        """Attach ``loras`` to the denoiser, each at its weight; returns their adapter names.

        Every LoRA is read and checked against the denoiser (:func:`~mmalign.generators.lora.check_lora`)
        before any is attached. Then the family's own mechanism: diffusers' ``load_lora_weights(file,
        adapter_name=...)`` (which converts kohya files and loads text-encoder layers too) and
        ``set_adapters(names, weights)``, so sampling computes ``W + Σ_i w_i·(α_i/r_i)·B_i·A_i`` as diffusers
        does. peft-format LoRAs go through the denoiser's ``load_lora_adapter``, and a denoiser without
        diffusers' LoRA support (Stable Audio) gets peft's layers and per-adapter scales directly
        (``set_weights_and_activate_adapters``, diffusers ``utils/peft_utils.py``).
        """
        from mmalign.generators.lora import PEFT_FILE, check_lora, read_lora, resolve_lora_file

        files = [resolve_lora_file(spec.source, spec.weight_name, local_files_only) for spec in loras]
        config = getattr(self.denoiser, "config", None)
        states = [read_lora(file, family=self.family, denoiser_config=config) for file in files]
        for state in states:
            check_lora(state, self.denoiser)
        present = set(getattr(self.denoiser, "peft_config", {}))
        names = [f"lora_{i}" for i in range(len(present), len(present) + len(loras))]
        for file, state, name in zip(files, states, names):
            if hasattr(self.pipe, "load_lora_weights") and file.name != PEFT_FILE:
                with _quiet_text_encoders():
                    self.pipe.load_lora_weights(str(file), adapter_name=name)
            else:
                _attach_peft(self.denoiser, state, name)
        weights = [spec.weight for spec in loras]
        if hasattr(self.pipe, "set_adapters"):
            self.pipe.set_adapters(names, weights)
        else:
            from diffusers.utils.peft_utils import set_weights_and_activate_adapters

            set_weights_and_activate_adapters(self.denoiser, names, weights)
        return names


class _NoTextEncoderKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No LoRA keys associated to")


@contextlib.contextmanager
def _quiet_text_encoders() -> Iterator[None]:
    """Drop diffusers' "No LoRA keys associated to CLIPTextModel" warnings while a LoRA loads: most LoRAs have no
    text-encoder layers (``diffusers/loaders/lora_base.py``). The denoiser's warning (``loaders/peft.py``) stays,
    though :func:`~mmalign.generators.lora.check_lora` has already made sure it cannot fire."""
    logger, quiet = logging.getLogger("diffusers.loaders.lora_base"), _NoTextEncoderKeys()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _attach_peft(denoiser: torch.nn.Module, state: LoraState, name: str) -> None:
    """Add ``state`` to ``denoiser`` as peft adapter ``name`` (diffusers' ``load_lora_adapter`` where the
    denoiser has it, else peft's ``inject_adapter_in_model`` + ``set_peft_model_state_dict``)."""
    from mmalign.generators.lora import lora_config_kwargs, peft_state_dict

    weights, config = peft_state_dict(state), lora_config_kwargs(state)
    if hasattr(denoiser, "load_lora_adapter"):
        denoiser.load_lora_adapter(weights, prefix=None, adapter_name=name, metadata=config)
        return
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    inject_adapter_in_model(LoraConfig(**config), denoiser, adapter_name=name)
    set_peft_model_state_dict(denoiser, weights, adapter_name=name)


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
    #: the media type :meth:`encode_media` takes
    media_type: type[Media] = ImageBatch

    def __init__(self, generator: DiffusersGenerator):
        self.gen = generator
        self.pipe = generator.pipe
        self.device = generator.device

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.gen.denoiser

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def lora_target_modules(self) -> list[str]:
        return list(self.lora_target_modules_default)

    def encoders(self) -> dict[str, torch.nn.Module]:
        return self.gen.encoders()

    def release_encoders(self) -> None:
        """Offload :meth:`encoders` after the last :meth:`encode_prompts` / :meth:`encode_media`
        (see :meth:`DiffusersGenerator.release_encoders`)."""
        self.gen.release_encoders()

    def _check_media(self, media: Media) -> None:
        if not isinstance(media, self.media_type):
            raise InputError(f"{self.gen.family} encodes {self.media_type.modality} media "
                             f"({self.media_type.__name__}), got {type(media).__name__}")

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
