"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``): one CLIP text encoder, a UNet, epsilon
or v-prediction as the scheduler config says (Rombach et al. 2022; SD 2.x-768 uses v)."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import StableDiffusionPipeline

from mmalign.generators._common import DDPMAdapter, DiffusersGenerator, cond_batch
from mmalign.generators.base import Cond
from mmalign.media import Media


class SDAdapter(DDPMAdapter):
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return {"prompt_embeds": embeds}

    def encode_media(self, media: Media) -> torch.Tensor:
        self._check_media(media)
        return self._encode_frames(media.pixels)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        c = cond_batch(cond, noisy.device, self.dtype)
        return self.denoise(noisy.to(self.dtype), t.to(noisy.device), encoder_hidden_states=c["prompt_embeds"]).sample


class SDGenerator(DiffusersGenerator, family="sd", modality="image"):
    pipeline_class = StableDiffusionPipeline
    adapter_class = SDAdapter
    defaults = {"steps": 30, "guidance": 7.5}
