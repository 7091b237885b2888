"""MusicGen (transformers ``MusicgenForConditionalGeneration``; Copet et al. 2023): a T5-conditioned
autoregressive decoder over EnCodec tokens. Sampling-only: it is not a diffusion model, so
:meth:`trainable` raises :class:`~mmalign.errors.ConfigError`.

Each item is generated on its own under a forked RNG seeded with its item seed, so an item's audio
depends only on the run seed and its index (not on the batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from mmalign.generators._common import expand_prompts, item_seeds, write_defaults
from mmalign.generators.base import Generator
from mmalign.media import AudioBatch


class MusicGenGenerator(Generator):
    family = "musicgen"
    modality = "audio"
    defaults = {"max_new_tokens": 256, "guidance": 3.0}

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, defaults: dict[str, Any] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.defaults = {**type(self).defaults, **(defaults or {})}

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    def sample(self, prompts: Sequence[str] | str, n: int = 1, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, batch_size: int = 8, progress: bool = True, **kwargs: Any) -> AudioBatch:
        """``steps`` is the number of audio-token frames (``max_new_tokens``); ``batch_size`` is unused
        because items are drawn one at a time for seed-stable output."""
        items = expand_prompts(prompts, n)
        seeds = item_seeds(seed, len(items))
        tokens = int(steps or self.defaults["max_new_tokens"])
        guidance = float(self.defaults["guidance"] if guidance is None else guidance)
        outs = []
        devices = [self.device] if self.device.type == "cuda" else []
        for prompt, s in tqdm(list(zip(items, seeds)), desc="sampling musicgen", disable=not progress):
            inputs = self.tokenizer([prompt], return_tensors="pt", padding=True).to(self.device)
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(s)
                audio = self.model.generate(**inputs, do_sample=True, guidance_scale=guidance, max_new_tokens=tokens)
            outs.append(audio.float().cpu())
        length = min(a.shape[-1] for a in outs)
        samples = torch.cat([a[..., :length] for a in outs]).clamp(-1, 1)
        metadata = [{"seed": s, "run_seed": seed, "prompt_index": i // n, "index": i % n} for i, s in enumerate(seeds)]
        return AudioBatch(samples, sample_rate=self.sample_rate, prompts=items, metadata=metadata)

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        write_defaults(folder, {"family": self.family, **self.defaults})
