"""The one sampling interface, and the one training interface trainers see.

* :class:`Generator` — ``sample(prompts, n, seed, ...) -> Media`` for any modality.
* :class:`DiffusionAdapter` — what a trainer needs of a diffusion generator: prompt and media
  encoders, the forward (noising) process, the training target of the family's objective
  (epsilon, v-prediction or flow-matching velocity) and the denoiser to adapt. SDXL's pooled
  embeddings and ``add_time_ids``, video frames and audio latents live inside the adapter, so
  trainers never branch on the family.

A generator family registers in :data:`FAMILIES` by naming itself in its class statement:
``class SDXLGenerator(DiffusersGenerator, family="sdxl", modality="image")``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch

from mmalign.errors import ConfigError
from mmalign.media import Media
from mmalign.registry import Registry

#: generator family name -> Generator class (filled by the ``family=`` of each Generator subclass)
FAMILIES: Registry[type["Generator"]] = Registry("generator family")

Cond = dict[str, torch.Tensor]
"""Prompt conditioning as a dict of tensors with batch first (e.g. ``prompt_embeds``,
``pooled_prompt_embeds``, ``add_time_ids``), so it can be cached, indexed and concatenated."""


class DiffusionAdapter(ABC):
    """Family-specific glue between a diffusers denoiser and a family-agnostic trainer."""

    #: "epsilon" | "v_prediction" | "flow" (velocity ``noise - x0``, rectified flow)
    prediction_type: str
    #: number of training timesteps (DDPM-style) or 1000 for flow models (t in [0, 1000))
    num_train_timesteps: int = 1000
    #: what :meth:`denoise` calls instead of :attr:`denoiser` when set: the trainer's distributed wrapper of it
    #: (``accelerator.prepare``: DDP averages the gradients in backward)
    forward_module: torch.nn.Module | None = None

    def denoise(self, *args: Any, **kwargs: Any) -> Any:
        """Run the denoiser (through :attr:`forward_module` when the trainer set one); :meth:`predict` calls this."""
        return (self.forward_module or self.denoiser)(*args, **kwargs)

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The module to fine-tune (UNet or transformer)."""

    @property
    @abstractmethod
    def lora_target_modules(self) -> list[str]:
        """Default LoRA target module names for :attr:`denoiser` (peft ``target_modules``)."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Text conditioning for ``prompts`` (batch first)."""

    @abstractmethod
    def encode_media(self, media: Media) -> torch.Tensor:
        """Clean latents ``x0`` of ``media`` (scaled as the denoiser expects)."""

    def media_conditioning(self, media: Media) -> Cond:
        """Conditioning that comes from each media item rather than its prompt, batch first (SDXL: its
        micro-conditioning from the item's original size and crop); none by default. The latent cache
        stores it next to the latents and the trainer uses it in place of the prompt's."""
        return {}

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps, uniform over the schedule (integers for DDPM-style, floats for flow)."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)

    @abstractmethod
    def noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noisy latents ``x_t`` from ``x0``, ``noise`` and timesteps ``t`` (forward process)."""

    @abstractmethod
    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict at ``t`` (epsilon, v or flow velocity)."""

    @abstractmethod
    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's prediction for ``noisy`` at ``t`` given ``cond`` (same layout as :meth:`target`)."""

    @abstractmethod
    def encoders(self) -> dict[str, torch.nn.Module]:
        """The modules behind :meth:`encode_prompts` and :meth:`encode_media` (text encoders, VAE), by name."""

    @abstractmethod
    def release_encoders(self) -> None:
        """Free the accelerator memory of :meth:`encoders` once their outputs are cached (the denoiser
        stays). Sampling from the generator still works afterwards."""


class Generator(ABC):
    """A text-to-media generator (image, video or audio)."""

    #: the name it is registered under in :data:`FAMILIES`
    family: str
    #: "image" | "video" | "audio"
    modality: str

    def __init_subclass__(cls, family: str | None = None, modality: str | None = None, **kwargs: Any) -> None:
        """``family=`` registers the class in :data:`FAMILIES`; ``modality=`` sets its modality."""
        super().__init_subclass__(**kwargs)
        if modality is not None:
            cls.modality = modality
        if family is not None:
            cls.family = family
            FAMILIES.register(family)(cls)

    @abstractmethod
    def sample(
        self,
        prompts: Sequence[str],
        n: int = 1,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        batch_size: int = 8,
        progress: bool = True,
        first_prompt: int = 0,
        **kwargs: Any,
    ) -> Media:
        """``n`` samples per prompt, prompt-major (all samples of prompt 0 first). Same seed, same output.
        ``first_prompt`` offsets the item indices that seed the noise: processes that each sample a
        slice of one run's prompts pass the slice's start and together reproduce the whole run."""

    def trainable(self) -> DiffusionAdapter:
        raise ConfigError(f"{type(self).__name__} is sampling-only (not a diffusion model); it cannot be trained")

    def sample_differentiable(self, prompts: Sequence[str], generators: Sequence[torch.Generator], grad_steps: int,
                              steps: int | None = None, guidance: float | None = None) -> Media:
        """One batch (one item per prompt, item ``i`` from ``generators[i]``) whose autograd graph reaches
        the denoiser's weights through the last ``grad_steps`` sampling steps (reward-gradient training)."""
        raise ConfigError(f"{type(self).__name__} cannot sample with gradients; reward backpropagation "
                          "(method: draft) needs a diffusers generator")
