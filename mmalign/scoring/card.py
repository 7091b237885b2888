"""The scorer card: one YAML file per scorer in ``scorers/`` (schema :class:`ScorerCard`).

A card says which architecture to build, where its weights come from, how media are
preprocessed and how the number is computed, so that a score can always be traced back to a
backbone, a checkpoint and a formula (one "CLIP score" differs from another by a factor of 100, a
clamp or a weight of 2.5: see :mod:`mmalign.scoring.metrics`).

``architecture.family`` names a builder registered in :data:`mmalign.scoring.base.SCORER_FAMILIES`;
a card whose family lives outside mmalign's scoring package names the module that registers it
under ``plugin`` (``plugin: mmalign.synth.scorer``), which :func:`mmalign.scoring.load_scorer`
imports before the lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmalign.cards import Card, list_cards, load_card
from mmalign.errors import ConfigError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointSpec(_Strict):
    """Where weights come from.

    ``source``: ``hub`` (Hugging Face ``repo_id`` + optional ``filename``; no filename = the whole
    repository, as ``from_pretrained`` reads it), ``url`` (a direct download of ``filename``),
    ``local`` (``path``, a file or folder), ``shipped`` (``path`` under ``assets/``) or ``none``
    (nothing to load: random weights for tests and benchmarks, or a scorer without weights such as
    an exact oracle; write ``checkpoint: {source: none}``).
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

    ``family``: a registered scorer family; built in: ``open_clip`` (``model`` = open_clip
    architecture name), ``hf_clip`` (transformers CLIPModel), ``hf_clap`` (transformers ClapModel),
    ``vlm_judge`` (a transformers VLM); others come from the card's ``plugin`` module.
    ``tokenizer``: ``open_clip`` (the architecture's own), ``word`` (a :class:`WordTokenizer` saved
    as ``tokenizer.json`` next to the weights) or a hub id of a transformers tokenizer/processor.
    """

    family: str
    model: str
    tokenizer: str = "open_clip"
    processor: str | None = None
    head: Literal["none", "laion_aesthetic_mlp"] = "none"
    config: dict[str, Any] | None = None  # an inline architecture config (tiny models)


class PreprocessSpec(_Strict):
    """Tensor preprocessing of media before the encoder: HPS v2's letterbox
    (tgxs002/HPSv2@866735e ``hpsv2/src/open_clip/transform.py::ResizeMaxSize``), the CLIP centre
    crop (PickScore, LAION aesthetic), CLAP's log-mel or a VLM's own processor."""

    kind: Literal["letterbox", "center_crop", "clap_mel", "vlm_processor"]
    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    antialias: bool = True
    sample_rate: int | None = None  # audio: the model's rate; inputs are resampled to it


class ScoreSpec(_Strict):
    """How the number is computed.

    ``formula``: ``cosine`` (raw cos of L2-normalised embeddings: HPS v2 ``img_score.py::score``,
    Social Reward ``validate.py``, ImageReward's ``CLIPScore``), ``scaled_cosine``
    (exp(logit_scale)·cos, PickScore ``infer_example``), ``100cosine`` (torchmetrics' per-sample
    CLIP score), ``aesthetic_mlp`` (MLP on the L2-normalised image embedding, LAION
    improved-aesthetic-predictor ``simple_inference.py``), ``judge`` (parsed VLM output,
    UnifiedReward), ``oracle`` (an exact check against known ground truth, as the synthetic world's),
    ``raters`` (a panel of simulated people's mean rating of the oracle's utility, the synthetic world's),
    ``mos`` (a regressed mean opinion score of quality, no prompt: MUSIQ-style IQA), ``combined`` (a weighted
    sum of other cards' scores, family ``combine``: :func:`mmalign.scoring.combine.combine`).
    ``bt_scale``: β of the Bradley-Terry probability P(a ≻ b) = σ(β·(s_a − s_b)) used by ``compare``;
    ``logit_scale`` = the checkpoint's own exp(logit_scale), i.e. the pairwise probability the model
    was trained with (HPS v2, PickScore-style cross-entropy over two images).
    """

    formula: Literal["cosine", "scaled_cosine", "100cosine", "aesthetic_mlp", "judge", "oracle", "raters", "mos", "combined"]
    bt_scale: float | Literal["logit_scale"] = 1.0
    range: str | None = None
    description: str = ""


class VideoSpec(_Strict):
    """Frame aggregation when an image scorer gets videos."""

    reduce: Literal["mean", "min"] = "mean"
    stride: int = Field(1, ge=1)
    captions: str | None = Field(None, description="A frame-caption planner (mmalign.scoring.video.FRAME_CAPTIONS, registered by the card's plugin): score each frame against its keyframe caption instead of the video's prompt")
    still_weight: float = Field(0.0, ge=0, description="w of a still-shot penalty: videos whose prompt the planner `captions` (mmalign.scoring.video.STILL_SHOTS) calls a still shot lose w · mean frame-to-frame MAE (VBench temporal flickering); 0 = off")

    @model_validator(mode="after")
    def _still_needs_planner(self) -> "VideoSpec":
        if self.still_weight > 0 and self.captions is None:
            raise ConfigError("video.still_weight > 0 needs video.captions: the planner that says which prompts are still shots")
        return self


class JudgeSpec(_Strict):
    """VLM-judge options: the prompt templates and parsing of CodeGoat24/UnifiedReward@ff6f520
    ``inference_qwen/image_generation/`` (see :mod:`mmalign.scoring.judge`)."""

    point_template: Literal["point_1_5", "point_1_10"] = "point_1_5"
    pair_template: Literal["pair_qwen", "pair_llava"] = "pair_qwen"
    image_size: int = 512
    max_new_tokens: int = 512
    max_frames: int = 8


class ScorerCard(Card):
    """One scorer, as shipped in ``scorers/<name>.yaml``.

    ``plugin``: a module imported before ``architecture.family`` is looked up (it registers that
    family). ``preprocessing`` may be left out by scorers that read media as they are.
    """

    name: str
    description: str
    plugin: str | None = None
    architecture: ArchitectureSpec
    checkpoint: CheckpointSpec
    head_checkpoint: CheckpointSpec | None = None
    preprocessing: PreprocessSpec | None = None
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
