"""MusicGen (transformers ``MusicgenForConditionalGeneration``; Copet et al. 2023): a T5-conditioned
autoregressive decoder over EnCodec tokens. Sampling-only: it is not a diffusion model, so
:meth:`trainable` raises :class:`~mmalign.errors.ConfigError`.

Its length is ``max_new_tokens`` (audio-token frames: 50 per second of audio for the released
models), not denoising ``steps``. Each item is generated on its own under a forked RNG seeded with
its item seed, so an item's audio depends only on the run seed and its index (not on the batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from mmalign.errors import InputError
from mmalign.generators._common import expand_prompts, item_plan, write_defaults
from mmalign.generators.base import Generator
from mmalign.media import AudioBatch
from mmalign.rng import owned_rng


class MusicGenGenerator(Generator, family="musicgen", modality="audio"):
    defaults = {"max_new_tokens": 256, "guidance": 3.0}

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, defaults: dict[str, Any] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.defaults = {**type(self).defaults, **(defaults or {})}

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Audio-token frames per second of audio (EnCodec's hop)."""
        return float(self.model.config.audio_encoder.frame_rate)

    def sample(self, prompts: Sequence[str] | str, n: int = 1, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, batch_size: int = 8, progress: bool = True,
               max_new_tokens: int | None = None, first_prompt: int = 0, **kwargs: Any) -> AudioBatch:
        """``max_new_tokens`` audio-token frames per item (default: :attr:`defaults`); other ``kwargs``
        go to ``model.generate``. ``batch_size`` is unused: items are drawn one at a time for seed-stable
        output. ``steps`` is an error: MusicGen is autoregressive and has no denoising steps."""
        if steps is not None:
            raise InputError(f"MusicGen is autoregressive: it has no denoising steps (got steps={steps}). Set the "
                             f"length with max_new_tokens=N audio-token frames ({self.frame_rate:g} per second "
                             "of audio), or max_new_tokens in the model's mmalign_generator.json")
        items = expand_prompts(prompts, n)
        seeds, metadata = item_plan(seed, n, len(items), first_prompt)
        tokens = int(max_new_tokens or self.defaults["max_new_tokens"])
        if tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1 audio-token frame, got {tokens}")
        guidance = float(self.defaults["guidance"] if guidance is None else guidance)
        outs = []
        for prompt, s in tqdm(list(zip(items, seeds)), desc="sampling musicgen", disable=not progress):
            inputs = self.tokenizer([prompt], return_tensors="pt", padding=True).to(self.device)
            with owned_rng(s, self.device), torch.no_grad():  # generate() samples from the global RNG
                audio = self.model.generate(**inputs, do_sample=True, guidance_scale=guidance, max_new_tokens=tokens,
                                            **kwargs)
            outs.append(audio.float().cpu())
        length = min(a.shape[-1] for a in outs)
        samples = torch.cat([a[..., :length] for a in outs]).clamp(-1, 1)
        return AudioBatch(samples, sample_rate=self.sample_rate, prompts=items, metadata=metadata)

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        write_defaults(folder, {"family": self.family, **self.defaults})
