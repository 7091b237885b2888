"""CLAP text–audio adherence (transformers ``ClapModel``) for music and sound.

Audio is mixed to mono, resampled to the model's rate (``scipy.signal.resample_poly``'s filter, applied in torch so the
differentiable path scores what the plain one does),
padded/cropped like ``ClapFeatureExtractor`` and turned into the extractor's log-mel spectrogram
*in torch* (:func:`log_mel`, checked against the extractor in the tests), so scoring is batched
on the device and gradients can reach the waveform. Score = cos(audio, text) of the projected,
L2-normalised embeddings (the usual "CLAP score").

Deviations from the extractor, both deterministic on purpose: audio longer than ``max_length_s``
is cropped to its *first* ``max_length_s`` seconds (the extractor takes a random crop, or random
crops fused for ``truncation="fusion"``); ``is_longer`` is set for such items.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmalign.errors import ConfigError, InputError
from mmalign.media import AudioBatch
from mmalign.scoring.base import SCORER_FAMILIES, Scorer
from mmalign.scoring.card import ScorerCard
from mmalign.scoring.tokenizer import word_tokenizer_beside
from mmalign.paths import is_offline
from mmalign.scoring.weights import resolve_checkpoint


def resample(samples: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """``[B, N]`` at ``rate`` → ``[B, N′]`` at ``target`` (N′ = ceil(N·target/rate)): ``scipy.signal.resample_poly``
    with its defaults (Kaiser-windowed FIR low-pass, β = 5, 10 zero crossings per side; zero padding), written in
    torch so the same function keeps the autograd graph. A differentiable reward must score what the plain one
    scores: an approximate resampler there (linear interpolation images the harmonics a timbre is heard by)
    gives the reward's gradient a different function to climb."""
    if rate == target:
        return samples
    from scipy.signal import firwin

    g = gcd(int(rate), int(target))
    up, down = int(target) // g, int(rate) // g
    n_in = samples.shape[-1]
    n_out = -(-n_in * up // down)
    half_len = 10 * max(up, down)
    h = firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0)) * up
    pre = down - half_len % down  # resample_poly's zero padding that centres the output samples
    h = np.concatenate([np.zeros(pre), h])
    taps = -(-len(h) // up)
    # polyphase: output j is Σ_m h[φ + up·m] · x[q − m] with p = (start + j)·down, φ = p mod up, q = p div up,
    # so the outputs j0, j0 + up, ... share one sub-filter and are a strided convolution of x
    phases = torch.from_numpy(np.pad(h, (0, taps * up - len(h))).reshape(taps, up).T.copy())
    phases = phases.flip(1).to(device=samples.device, dtype=samples.dtype)
    start = (half_len + pre) // down
    x = samples.reshape(-1, 1, n_in)
    last = (start + n_out - 1) * down // up
    x = F.pad(x, (taps - 1, max(0, last + 1 - n_in) + down))
    y = x.new_zeros(x.shape[0], n_out)
    for j0 in range(min(up, n_out)):
        phase, q0 = divmod((start + j0) * down, up)[::-1]
        out = F.conv1d(x[..., q0:], phases[phase].view(1, 1, -1), stride=down)
        y[:, j0::up] = out[:, 0, : len(range(j0, n_out, up))]
    return y.reshape(*samples.shape[:-1], n_out)


@dataclass(frozen=True)
class MelFrontend:
    """The numbers of a ``ClapFeatureExtractor`` and its filter bank ``[n_freq, n_mels]``."""

    sampling_rate: int
    fft_window_size: int
    hop_length: int
    max_length_s: float
    filters: torch.Tensor
    fusion: bool = False
    padding: str = "repeatpad"

    @classmethod
    def from_extractor(cls, fe) -> "MelFrontend":
        fusion = fe.truncation == "fusion"
        bank = fe.mel_filters if fusion else fe.mel_filters_slaney
        return cls(int(fe.sampling_rate), int(fe.fft_window_size), int(fe.hop_length), float(fe.max_length_s),
                   torch.tensor(np.asarray(bank), dtype=torch.float32), fusion, fe.padding)

    @property
    def max_samples(self) -> int:
        return int(self.max_length_s * self.sampling_rate)

    def fit_length(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad (repeat then zeros, as ``padding``) or crop ``[B, N]`` to ``max_samples``; also ``is_longer``."""
        n, m = x.shape[-1], self.max_samples
        if n > m:
            return x[:, :m], torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        if n < m:
            if self.padding == "repeatpad":
                x = x.repeat(1, m // n)
            elif self.padding == "repeat":
                x = x.repeat(1, m // n + 1)[:, :m]
            x = F.pad(x, (0, m - x.shape[-1]))
        return x, torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)


def log_mel(x: torch.Tensor, fe: MelFrontend) -> torch.Tensor:
    """Log-mel power spectrogram in dB, ``[B, N]`` → ``[B, T, n_mels]`` (HF ``spectrogram`` semantics:
    periodic Hann, centred frames with reflect padding, power 2, mel floor 1e-10, 10·log10)."""
    window = torch.hann_window(fe.fft_window_size, periodic=True, device=x.device, dtype=torch.float32)
    spec = torch.stft(x.float(), fe.fft_window_size, fe.hop_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2)  # [B, F, T]
    mel = torch.einsum("fm,bft->btm", fe.filters.to(x.device), spec)
    return 10.0 * torch.log10(mel.clamp(min=1e-10))


class ClapScorer(Scorer):
    """Text–audio cosine of a CLAP model (``formula``: ``cosine`` or ``scaled_cosine`` with logit_scale_a)."""

    modalities = ("audio",)

    def __init__(self, model: nn.Module, tokenizer: Callable, frontend: MelFrontend, *, formula: str = "cosine", **kw):
        if formula not in ("cosine", "scaled_cosine"):
            raise InputError(f"CLAP formula must be 'cosine' or 'scaled_cosine', got {formula!r}")
        self.model, self.tokenizer, self.frontend, self.formula = model.eval(), tokenizer, frontend, formula
        super().__init__(**kw)  # moves the model to the device and casts it to the compute dtype

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def features(self, audio: AudioBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs of an audio batch: ``input_features [B, k, T, M]`` and ``is_longer [B, 1]``."""
        x = resample(audio.samples.mean(dim=1), audio.sample_rate, self.frontend.sampling_rate)
        x, longer = self.fit_length(x)
        mel = log_mel(x, self.frontend).unsqueeze(1)
        if self.frontend.fusion:
            mel = mel.expand(-1, 4, -1, -1)
        return mel, longer

    def fit_length(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frontend.fit_length(x)

    def audio_embeddings(self, audio: AudioBatch) -> torch.Tensor:
        mel, longer = self.features(audio)
        out = self.model.get_audio_features(input_features=mel.to(self.dtype), is_longer=longer)  # mel in fp32, cast once
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(prompts))
        tok = self.tokenizer(unique)
        out = self.model.get_text_features(**{k: v.to(self.device) for k, v in tok.items()})
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        return feats[torch.tensor([unique.index(p) for p in prompts], device=feats.device)]

    def embeddings(self, media: AudioBatch, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_embeddings(media), self.text_embeddings(texts)

    def _score_batch(self, media: AudioBatch, prompts: list[str]) -> torch.Tensor:
        a = F.normalize(self.audio_embeddings(media).float(), dim=-1)
        t = F.normalize(self.text_embeddings(prompts).float(), dim=-1)
        cos = (a * t).sum(-1)
        return cos if self.formula == "cosine" else self.model.logit_scale_a.exp().float() * cos


@SCORER_FAMILIES.register("hf_clap")
def build_hf_clap(card: ScorerCard, local_files_only: bool | None = None, **kw) -> ClapScorer:
    """laion CLAP checkpoints (``ClapModel`` + ``ClapProcessor``) or a shipped synth-clap folder."""
    from transformers import AutoProcessor, ClapFeatureExtractor, ClapModel

    offline = is_offline(local_files_only)
    path = resolve_checkpoint(card.name, card.checkpoint, local_files_only)
    if path is None:
        raise ConfigError(f"scorer {card.name!r}: CLAP scorers need weights (checkpoint.source 'none' is not supported)")
    folder = Path(path)
    try:
        model = ClapModel.from_pretrained(str(folder), local_files_only=offline)
    except OSError as exc:
        raise InputError(f"scorer {card.name!r}: cannot load ClapModel from {folder}: {exc}") from exc
    if card.architecture.tokenizer == "word":
        tokenizer = word_tokenizer_beside(folder, card.name).hf
        fe = ClapFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    else:
        proc = AutoProcessor.from_pretrained(card.architecture.processor or str(folder), local_files_only=offline)
        fe = proc.feature_extractor

        def tokenizer(texts):
            return proc.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return ClapScorer(model, tokenizer, MelFrontend.from_extractor(fe), formula=card.score.formula, card=card, **kw)
