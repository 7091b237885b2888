"""Wan 2.1 text-to-video (``WanPipeline``; Wan team 2025): a DiT over causal-3D-VAE latents
``[B, C, T', h, w]`` (T' = (T − 1)/4 + 1), a (UM)T5 text encoder, rectified flow with velocity target
``ε − x0`` and timesteps ``σ·1000``. Latents are normalised with the VAE's per-channel
``latents_mean`` / ``latents_std`` (as ``WanPipeline`` decodes them)."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import WanPipeline

from mmalign.errors import InputError
from mmalign.generators._common import DiffusersGenerator, FlowAdapter, cond_batch
from mmalign.generators.base import Cond
from mmalign.media import Media, VideoBatch


class WanAdapter(FlowAdapter):
    media_type = VideoBatch

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=self.device,
                                            max_sequence_length=int(self.gen.defaults["max_sequence_length"]))
        return {"prompt_embeds": embeds}

    def encode_media(self, media: Media) -> torch.Tensor:
        self._check_media(media)
        frames = media.pixels.shape[1]
        if (frames - 1) % self.pipe.vae_scale_factor_temporal:
            raise InputError(f"wan: videos need 4k+1 frames (the VAE compresses time by "
                             f"{self.pipe.vae_scale_factor_temporal}), got {frames}; trim or pad the clips")
        vae = self.pipe.vae
        x = media.pixels.permute(0, 2, 1, 3, 4).to(self.device, vae.dtype) * 2 - 1  # [B, 3, T, H, W]
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode()
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        return (latents - mean) / std

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        c = cond_batch(cond, noisy.device, self.dtype)
        t = t.to(noisy.device, self.dtype).expand(noisy.shape[0])
        return self.denoise(hidden_states=noisy.to(self.dtype), timestep=t,
                             encoder_hidden_states=c["prompt_embeds"]).sample


class WanGenerator(DiffusersGenerator, family="wan", modality="video"):
    pipeline_class = WanPipeline
    adapter_class = WanAdapter
    denoiser_name = "transformer"
    defaults = {"steps": 50, "guidance": 5.0, "num_frames": 81, "fps": 16.0, "height": 480, "width": 832,
                "max_sequence_length": 512}
    call_defaults = ("height", "width", "num_frames", "max_sequence_length")
