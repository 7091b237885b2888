"""Stable Audio (``StableAudioPipeline``; Evans et al. 2024, "Stable Audio Open"): a DiT over the
waveform latents of ``AutoencoderOobleck`` ``[B, C, L]``, a T5 text encoder plus timing
(seconds start / end) conditioning, and an EDM-style scheduler (Karras et al. 2022).

Training follows the scheduler's own preconditioning (Karras et al. 2022, Table 1):
``x = x0 + σ·ε``, network input ``c_in(σ)·x`` at time ``c_noise(σ)``, and the network output ``F``
is trained so that ``x0 = c_skip·x + c_out·F``. For ``prediction_type="v_prediction"`` with
``σ_data = 1`` this is the v-objective ``F = cos θ·ε − sin θ·x0`` with ``σ = tan θ`` (Salimans & Ho
2022), the objective Stable Audio Open was trained with. Training timesteps ``t ∈ [0, 1000)`` map to
``σ = tan(π/2 · t/1000)`` (the cosine schedule), clipped to the scheduler's [σ_min, σ_max].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from diffusers import StableAudioPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from mmalign.errors import ConfigError, InputError
from mmalign.generators._common import DiffusersGenerator, LatentAdapter, _bcast, cond_batch
from mmalign.generators.base import Cond
from mmalign.media import AudioBatch, Media


def edm_coefficients(sigma: torch.Tensor, sigma_data: float, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of EDM preconditioning (Karras et al. 2022, Table 1; diffusers
    ``EDMDPMSolverMultistepScheduler.precondition_outputs``)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    if prediction_type == "v_prediction":
        c_out = -c_out
    elif prediction_type != "epsilon":
        raise ConfigError(f"EDM prediction_type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")
    return c_skip, c_out


def edm_target(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
               prediction_type: str) -> torch.Tensor:
    """The network output F with ``x0 = c_skip·(x0 + σ·ε) + c_out·F``."""
    s = _bcast(sigma, x0)
    c_skip, c_out = edm_coefficients(s, sigma_data, prediction_type)
    return (x0 - c_skip * (x0 + s * eps)) / c_out


class StableAudioAdapter(LatentAdapter):
    num_train_timesteps = 1000
    media_type = AudioBatch

    def __init__(self, generator: DiffusersGenerator):
        super().__init__(generator)
        self.scheduler = self.pipe.scheduler
        cfg = self.scheduler.config
        for name in ("sigma_data", "sigma_min", "sigma_max", "prediction_type"):
            if name not in cfg:
                raise ConfigError(f"stable_audio training needs an EDM-style scheduler with {name!r} in its config; "
                                  f"got {type(self.scheduler).__name__}")
        self.prediction_type = cfg.prediction_type
        edm_coefficients(torch.ones(1), 1.0, self.prediction_type)  # validates prediction_type

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(batch_size, generator=generator) * self.num_train_timesteps

    def sigmas(self, t: torch.Tensor) -> torch.Tensor:
        cfg = self.scheduler.config
        return torch.tan(t.float() / self.num_train_timesteps * math.pi / 2).clamp(cfg.sigma_min, cfg.sigma_max)

    def encode_prompts(self, prompts: Sequence[str], seconds_end: float | None = None) -> Cond:
        prompts = list(prompts)
        embeds = self.pipe.encode_prompt(prompts, self.device, False)
        end = self.gen.max_seconds if seconds_end is None else seconds_end
        start_h, end_h = self.pipe.encode_duration(0.0, end, self.device, False, len(prompts))
        return {"prompt_embeds": torch.cat([embeds, start_h, end_h], dim=1),
                "global_embeds": torch.cat([start_h, end_h], dim=2)}

    def encode_media(self, media: Media) -> torch.Tensor:
        self._check_media(media)
        vae = self.pipe.vae
        if media.sample_rate != vae.config.sampling_rate:
            raise InputError(f"stable_audio: audio at {media.sample_rate} Hz, the VAE expects "
                             f"{vae.config.sampling_rate} Hz; resample first")
        x = media.samples
        if x.shape[1] != vae.config.audio_channels:
            if x.shape[1] != 1:
                raise InputError(f"stable_audio: {x.shape[1]} channels, the VAE expects {vae.config.audio_channels}")
            x = x.repeat(1, vae.config.audio_channels, 1)
        with torch.no_grad():
            return vae.encode(x.to(self.device, vae.dtype)).latent_dist.mode()

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """EDM forward process x = x0 + σ·ε (Karras et al. 2022, eq. 7)."""
        return latents + _bcast(self.sigmas(t), latents) * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return edm_target(latents, noise, self.sigmas(t), float(self.scheduler.config.sigma_data), self.prediction_type)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        c = cond_batch(cond, noisy.device, self.dtype)
        sigma = self.sigmas(t).to(noisy.device).expand(noisy.shape[0])
        x_in = self.scheduler.precondition_inputs(noisy, _bcast(sigma, noisy)).to(self.dtype)
        c_noise = self.scheduler.precondition_noise(sigma).to(self.dtype)
        rotary = get_1d_rotary_pos_embed(self.pipe.rotary_embed_dim, noisy.shape[2] + c["global_embeds"].shape[1],
                                         use_real=True, repeat_interleave_real=False)
        return self.denoise(x_in, c_noise, encoder_hidden_states=c["prompt_embeds"],
                             global_hidden_states=c["global_embeds"], rotary_embedding=rotary).sample


class StableAudioGenerator(DiffusersGenerator, family="stable_audio", modality="audio"):
    pipeline_class = StableAudioPipeline
    adapter_class = StableAudioAdapter
    denoiser_name = "transformer"
    defaults = {"steps": 100, "guidance": 7.0}
    call_defaults = ("audio_end_in_s",)

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vae.config.sampling_rate)

    @property
    def max_seconds(self) -> float:
        hop = math.prod(self.pipe.vae.config.downsampling_ratios)
        return self.pipe.transformer.config.sample_size * hop / self.sample_rate
