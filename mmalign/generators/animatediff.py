"""AnimateDiff (``AnimateDiffPipeline``; Guo et al. 2024): a MotionAdapter inserted into an SD UNet
(``UNetMotionModel``). Video latents are ``[B, C, T, h, w]``; the objective is the SD UNet's
(epsilon or v-prediction on its DDPM schedule)."""

from __future__ import annotations

import torch
from diffusers import AnimateDiffPipeline

from mmalign.generators._common import DiffusersGenerator, cond_batch
from mmalign.generators.base import Cond
from mmalign.generators.sd import SDAdapter
from mmalign.media import Media, VideoBatch


class AnimateDiffAdapter(SDAdapter):
    media_type = VideoBatch

    def encode_media(self, media: Media) -> torch.Tensor:
        """Per-frame VAE latents, ``[B, C, T, h, w]``."""
        self._check_media(media)
        b, t = media.pixels.shape[:2]
        latents = self._encode_frames(media.pixels.reshape(b * t, *media.pixels.shape[2:]))
        return latents.reshape(b, t, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """``noisy`` is ``[B, C, T, h, w]``; the text embeddings are repeated per frame as AnimateDiffPipeline does."""
        c = cond_batch(cond, noisy.device, self.dtype)
        embeds = c["prompt_embeds"].repeat_interleave(noisy.shape[2], dim=0)
        return self.denoise(noisy.to(self.dtype), t.to(noisy.device), encoder_hidden_states=embeds).sample


class AnimateDiffGenerator(DiffusersGenerator, family="animatediff", modality="video"):
    pipeline_class = AnimateDiffPipeline
    adapter_class = AnimateDiffAdapter
    defaults = {"steps": 25, "guidance": 7.5, "num_frames": 16, "fps": 8.0}
    call_defaults = ("height", "width", "num_frames")
