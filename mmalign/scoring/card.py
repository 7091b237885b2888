"""The scorer card: one YAML file per scorer in ``scorers/`` (schema :class:`ScorerCard`).

A card says which architecture to build, where its weights come from, how media are
preprocessed and how the number is computed, so that a score can always be traced back to a
backbone, a checkpoint and a formula (reference/scorers.md §1, §12 S13 "always record the formula
and the backbone").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmalign.cards import Card, list_cards, load_card

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointSpec(_Strict):
    """Where weights come from.

    ``source``: ``hub`` (Hugging Face ``repo_id`` + optional ``filename``; no filename = the whole
    repository, as ``from_pretrained`` reads it), ``url`` (a direct download of ``filename``),
    ``local`` (``path``, a file or folder), ``shipped`` (``path`` under ``assets/``) or ``none``
    (random weights: only for tests and benchmarks).
    """

    source: Literal["hub", "url", "local", "shipped", "none"]
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    url: str | None = None
    path: str | None = None
    state_dict_key: str | None = None  # e.g. HPS checkpoints keep the weights under "state_dict"


class ArchitectureSpec(_Strict):
    """What to build.

    ``family``: ``open_clip`` (``model`` = open_clip architecture name), ``hf_clip`` (transformers
    CLIPModel), ``hf_clap`` (transformers ClapModel), ``vlm_judge`` (a transformers VLM).
    ``tokenizer``: ``open_clip`` (the architecture's own), ``word`` (the synth word tokenizer saved
    next to the weights) or a hub id of a transformers tokenizer/processor.
    """

    family: Literal["open_clip", "hf_clip", "hf_clap", "vlm_judge"]
    model: str
    tokenizer: str = "open_clip"
    processor: str | None = None
    head: Literal["none", "laion_aesthetic_mlp"] = "none"
    config: dict[str, Any] | None = None  # an inline architecture config (tiny models)


class PreprocessSpec(_Strict):
    """Tensor preprocessing of media before the encoder (reference/scorers.md §2.3, §4, §7)."""

    kind: Literal["letterbox", "center_crop", "clap_mel", "vlm_processor"]
    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    antialias: bool = True
    sample_rate: int | None = None  # audio: the model's rate; inputs are resampled to it


class ScoreSpec(_Strict):
    """How the number is computed.

    ``formula``: ``cosine`` (raw cos of L2-normalised embeddings; HPS v2 §2.4, Social Reward §5,
    ImageReward's CLIPScore §3.4), ``scaled_cosine`` (exp(logit_scale)·cos, PickScore §4),
    ``100cosine`` (torchmetrics' per-sample CLIP score, S13), ``aesthetic_mlp`` (MLP on the
    L2-normalised image embedding, §7), ``judge`` (parsed VLM output, §6).
    ``bt_scale``: β of the Bradley-Terry probability P(a ≻ b) = σ(β·(s_a − s_b)) used by ``compare``;
    ``logit_scale`` = the checkpoint's own exp(logit_scale), i.e. the pairwise probability the model
    was trained with (HPS v2, PickScore-style cross-entropy over two images).
    """

    formula: Literal["cosine", "scaled_cosine", "100cosine", "aesthetic_mlp", "judge"]
    bt_scale: float | Literal["logit_scale"] = 1.0
    range: str | None = None
    description: str = ""


class VideoSpec(_Strict):
    """Frame aggregation when an image scorer gets videos."""

    reduce: Literal["mean", "min"] = "mean"
    stride: int = Field(1, ge=1)


class JudgeSpec(_Strict):
    """VLM-judge options (reference/scorers.md §6.2, S16)."""

    point_template: Literal["point_1_5", "point_1_10"] = "point_1_5"
    pair_template: Literal["pair_qwen", "pair_llava"] = "pair_qwen"
    image_size: int = 512
    max_new_tokens: int = 512
    max_frames: int = 8


class ScorerCard(Card):
    """One scorer, as shipped in ``scorers/<name>.yaml``."""

    name: str
    description: str
    architecture: ArchitectureSpec
    checkpoint: CheckpointSpec
    head_checkpoint: CheckpointSpec | None = None
    preprocessing: PreprocessSpec
    score: ScoreSpec
    modalities: tuple[Literal["image", "video", "audio"], ...]
    license: str
    paper: str
    code: str | None = None
    video: VideoSpec = VideoSpec()
    judge: JudgeSpec | None = None
    notes: tuple[str, ...] = ()


def read_card(name_or_path: str | Path, overrides: tuple[str, ...] = ()) -> ScorerCard:
    """Read and validate one scorer card by shipped name or path (a ConfigError names the file and,
    for an unknown key, the nearest valid key)."""
    return load_card(name_or_path, ScorerCard, "scorers", overrides)


def list_scorer_cards() -> list[str]:
    """Names of the shipped scorer cards."""
    return list_cards("scorers")
