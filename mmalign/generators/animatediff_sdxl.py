"""AnimateDiff on SDXL (``AnimateDiffSDXLPipeline``; Guo et al. 2024): a MotionAdapter inserted into
an SDXL UNet. Conditioning is SDXL's (both encoders, pooled embedding, ``add_time_ids``) and video
latents are ``[B, C, T, h, w]``; the objective is the SDXL UNet's.
"""

from __future__ import annotations

import torch
from diffusers import AnimateDiffSDXLPipeline

from mmalign.generators._common import cond_batch
from mmalign.generators.animatediff import AnimateDiffAdapter, AnimateDiffGenerator
from mmalign.generators.base import Cond
from mmalign.generators.sdxl import SDXLAdapter, SDXLGenerator
from mmalign.media import VideoBatch


class AnimateDiffSDXLAdapter(SDXLAdapter):
    media_type = VideoBatch
    encode_media = AnimateDiffAdapter.encode_media

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """``noisy`` is ``[B, C, T, h, w]``; text embeddings are repeated per frame (as the pipeline does),
        pooled embeddings and ``add_time_ids`` stay per video (the UNet repeats its time embedding)."""
        c = cond_batch(cond, noisy.device, self.dtype)
        embeds = c["prompt_embeds"].repeat_interleave(noisy.shape[2], dim=0)
        added = {"text_embeds": c["pooled_prompt_embeds"], "time_ids": c["add_time_ids"]}
        return self.denoise(noisy.to(self.dtype), t.to(noisy.device), encoder_hidden_states=embeds,
                             added_cond_kwargs=added).sample


class AnimateDiffSDXLGenerator(AnimateDiffGenerator, family="animatediff_sdxl"):
    pipeline_class = AnimateDiffSDXLPipeline
    adapter_class = AnimateDiffSDXLAdapter
    native_size = SDXLGenerator.native_size
