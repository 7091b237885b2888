"""Stable Diffusion 3 (``StableDiffusion3Pipeline``; Esser et al. 2024): an MM-DiT trained with
rectified flow, sampled by ``FlowMatchEulerDiscreteScheduler``. Timesteps are ``σ·1000``; the
training target is the velocity ``ε − x0``. The T5 encoder (``text_encoder_3``) is optional in
diffusers: without it the T5 part of the sequence is zeros, which the tiny builder uses."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import StableDiffusion3Pipeline

from mmalign.generators._common import DiffusersGenerator, FlowAdapter, cond_batch
from mmalign.generators.base import Cond
from mmalign.media import Media


class SD3Adapter(FlowAdapter):
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=int(self.gen.defaults["max_sequence_length"]))
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def encode_media(self, media: Media) -> torch.Tensor:
        self._check_media(media)
        return self._encode_frames(media.pixels)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        c = cond_batch(cond, noisy.device, self.dtype)
        t = t.to(noisy.device, self.dtype).expand(noisy.shape[0])
        return self.denoise(hidden_states=noisy.to(self.dtype), timestep=t, encoder_hidden_states=c["prompt_embeds"],
                             pooled_projections=c["pooled_prompt_embeds"]).sample


class SD3Generator(DiffusersGenerator, family="sd3", modality="image"):
    pipeline_class = StableDiffusion3Pipeline
    adapter_class = SD3Adapter
    denoiser_name = "transformer"
    defaults = {"steps": 28, "guidance": 7.0, "max_sequence_length": 256}
    call_defaults = ("height", "width", "max_sequence_length")
