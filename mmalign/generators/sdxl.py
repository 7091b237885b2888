"""SDXL (``StableDiffusionXLPipeline``; Podell et al. 2023, §2.2 micro-conditioning).

Conditioning: both CLIP encoders' penultimate hidden states concatenated on the last axis
(768 + 1280 = 2048 for the real model), the pooled embedding of the second encoder, and
``add_time_ids = [orig_h, orig_w, crop_top, crop_left, target_h, target_w]`` (Podell et al. 2023,
§2.2; diffusers ``StableDiffusionXLPipeline._get_add_time_ids``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import StableDiffusionXLPipeline

from mmalign.errors import InputError
from mmalign.generators._common import DDPMAdapter, DiffusersGenerator, cond_batch
from mmalign.generators.base import Cond
from mmalign.media import Media

Size = tuple[int, int]


def add_time_ids(original_sizes: Sequence[Size], crops_top_left: Sequence[Size], target_size: Size) -> torch.Tensor:
    """``[B, 6]`` micro-conditioning: original (h, w) + crop top-left (top, left) + target (h, w)."""
    if len(original_sizes) != len(crops_top_left):
        raise InputError(f"{len(original_sizes)} original sizes for {len(crops_top_left)} crops; give one of each per item")
    rows = [[*map(float, o), *map(float, c), *map(float, target_size)] for o, c in zip(original_sizes, crops_top_left)]
    return torch.tensor(rows, dtype=torch.float32)


class SDXLAdapter(DDPMAdapter):
    def encode_prompts(self, prompts: Sequence[str], original_sizes: Sequence[Size] | None = None,
                       crops_top_left: Sequence[Size] | None = None, target_size: Size | None = None) -> Cond:
        """Prompt embeddings, pooled embeddings and ``add_time_ids``.

        ``original_sizes`` are the (h, w) of each training image before resizing and ``crops_top_left``
        its crop offset (``compute_time_ids`` in huggingface/diffusers
        ``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py``@3e615b3); both default
        to the target size and (0, 0).
        """
        prompts = list(prompts)
        target = tuple(target_size or self.gen.native_size)
        # one embedding per prompt is the default of both SDXL and AnimateDiff-SDXL pipelines
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                                       do_classifier_free_guidance=False)
        time_ids = add_time_ids(original_sizes or [target] * len(prompts), crops_top_left or [(0, 0)] * len(prompts), target)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "add_time_ids": time_ids.to(self.device)}

    def encode_media(self, media: Media) -> torch.Tensor:
        self._check_media(media)
        return self._encode_frames(media.pixels)

    def media_conditioning(self, media: Media) -> Cond:
        """``add_time_ids`` of each image: its ``original_size`` and ``crop_top_left`` as the data loader
        recorded them (:func:`mmalign.data.pairs.fit_resolution`; else its own size and (0, 0)) and its
        size as the target, as ``compute_time_ids`` in diffusers' ``train_diffusion_dpo_sdxl.py`` @ 58eb52c0."""
        size = tuple(int(x) for x in media.pixels.shape[-2:])
        meta = media.metadata or [{}] * len(media)
        return {"add_time_ids": add_time_ids([tuple(m.get("original_size", size)) for m in meta],
                                             [tuple(m.get("crop_top_left", (0, 0))) for m in meta], size)}

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        c = cond_batch(cond, noisy.device, self.dtype)
        added = {"text_embeds": c["pooled_prompt_embeds"], "time_ids": c["add_time_ids"]}
        return self.denoise(noisy.to(self.dtype), t.to(noisy.device), encoder_hidden_states=c["prompt_embeds"],
                             added_cond_kwargs=added).sample


class SDXLGenerator(DiffusersGenerator, family="sdxl", modality="image"):
    pipeline_class = StableDiffusionXLPipeline
    adapter_class = SDXLAdapter
    defaults = {"steps": 30, "guidance": 5.0}

    @property
    def native_size(self) -> Size:
        s = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return (int(s), int(s))
