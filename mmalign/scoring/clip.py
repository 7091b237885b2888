"""CLIP-family scorers: HPS v2/v2.1, PickScore, Social Reward, CLIP score, LAION aesthetic, synth-hps.

One class, :class:`ClipScorer`, holds a dual encoder (open_clip ``CLIP`` or transformers
``CLIPModel``), its tokenizer, its tensor preprocessing and a formula:

* ``cosine`` — cos(f_img, f_txt) of L2-normalised features, no logit scale and no ×100: HPS v2
  (tgxs002/HPSv2@866735e ``hpsv2/img_score.py::score``), Social Reward
  (Picsart-AI-Research/Social-Reward@31ccd0e ``validate.py``), ImageReward's CLIPScore
  (THUDM/ImageReward@c1392c6 ``ImageReward/models/CLIPScore.py``);
* ``scaled_cosine`` — exp(logit_scale)·cos: PickScore (yuvalkirstain/PickScore@f79607f
  ``trainer/scripts/eval_preference_predictor.py::infer_example``); :meth:`ClipScorer.probs`
  gives the softmax over one prompt's images;
* ``100cosine`` — torchmetrics' per-sample CLIP score (the clamp at 0 happens *after*
  averaging, see :func:`mmalign.scoring.metrics.clip_score_torchmetrics`);
* ``aesthetic_mlp`` — the LAION improved-aesthetic head on the **L2-normalised** image embedding
  (christophschuhmann/improved-aesthetic-predictor@6934dd8 ``simple_inference.py``); prompts
  are not used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmalign.errors import ConfigError, InputError
from mmalign.media import ImageBatch
from mmalign.scoring.base import SCORER_FAMILIES, Scorer, as_media, check_prompts
from mmalign.scoring.card import ScorerCard
from mmalign.scoring.preprocess import ImagePreprocess
from mmalign.scoring.tokenizer import word_tokenizer_beside
from mmalign.paths import is_offline
from mmalign.scoring.weights import load_state_dict, resolve_checkpoint

FORMULAS = ("cosine", "scaled_cosine", "100cosine", "aesthetic_mlp")


class AestheticMLP(nn.Module):
    """LAION improved-aesthetic-predictor head (``simple_inference.py::MLP``): 768→1024→128→64→16→1,
    dropouts, **no activations**."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def aesthetic_score(embedding: torch.Tensor, head: nn.Module, normalize: bool = True) -> torch.Tensor:
    """mlp(f / ‖f‖₂) → ``[B]``. ``normalize=False`` reproduces the known failure of feeding the raw
    embedding (scores of 20–30 instead of ≈1–10)."""
    x = F.normalize(embedding.float(), dim=-1) if normalize else embedding.float()
    return head(x).squeeze(-1)


def _pooled(out) -> torch.Tensor:
    """transformers ≥ 5 returns a ModelOutput whose ``pooler_output`` is the projected feature."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer(Scorer):
    """A scorer on a CLIP dual encoder; see the module docstring.

    ``backend``: ``"open_clip"`` (``encode_image``/``encode_text``, tokenizer returns ids) or
    ``"hf"`` (``get_image_features``/``get_text_features``, tokenizer returns a dict of tensors).
    """

    modalities = ("image", "video")  # videos by frame aggregation (video.py)

    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess: ImagePreprocess, *, backend: str = "open_clip",
                 formula: str = "cosine", head: nn.Module | None = None, **kw):
        super().__init__(**kw)
        if formula not in FORMULAS:
            raise InputError(f"unknown score formula {formula!r}; use one of {FORMULAS}")
        if formula == "aesthetic_mlp" and head is None:
            raise InputError("formula 'aesthetic_mlp' needs a head module")
        if backend not in ("open_clip", "hf"):
            raise InputError(f"unknown CLIP backend {backend!r}; use 'open_clip' or 'hf'")
        self.model = model.eval().to(self.device)
        self.head = None if head is None else head.eval().to(self.device)
        self.tokenizer, self.preprocess, self.backend, self.formula = tokenizer, preprocess, backend, formula
        self.needs_prompts = formula != "aesthetic_mlp"

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.model, self.head) if m is not None]

    # -- the two towers -------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image embeddings of preprocessed pixels ``[B,3,S,S]``."""
        if self.backend == "open_clip":
            return self.model.encode_image(pixels)
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Raw text embeddings; each distinct prompt is encoded once."""
        unique = list(dict.fromkeys(prompts))
        tokens = self.tokenizer(unique)
        if self.backend == "open_clip":
            feats = self.model.encode_text(tokens.to(self.device))
        else:
            tokens = tokens if isinstance(tokens, dict) else {"input_ids": tokens}
            feats = _pooled(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))
        index = torch.tensor([unique.index(p) for p in prompts], device=feats.device)
        return feats[index]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    # -- scoring ---------------------------------------------------------------------------------
    def _score_batch(self, media: ImageBatch, prompts: list[str]) -> torch.Tensor:
        img = self.image_features(self.preprocess(media.pixels))
        if self.formula == "aesthetic_mlp":
            return aesthetic_score(img, self.head)
        cos = (F.normalize(img.float(), dim=-1) * F.normalize(self.text_features(prompts).float(), dim=-1)).sum(-1)
        if self.formula == "cosine":
            return cos
        if self.formula == "100cosine":
            return 100.0 * cos
        return self.logit_scale.float() * cos

    def probs(self, media: ImageBatch | torch.Tensor, prompt: str, **kw) -> torch.Tensor:
        """PickScore probabilities: softmax of the scores of one prompt's images (sums to 1)."""
        media = as_media(media)
        check_prompts(prompt, len(media))
        return torch.softmax(self.score(media, prompt, **kw), dim=0)


# -- building from a card ----------------------------------------------------------------------------
def register_open_clip_config(name: str, model_cfg: dict) -> str:
    """Make ``open_clip.create_model(name)`` build ``model_cfg``; returns ``name``.

    open_clip keeps its architectures in one process-wide table, ``open_clip.factory._MODEL_CONFIGS``
    (filled from JSON files; ``add_model_config`` would need a folder on disk and rescans it). The
    config goes into that table directly, and only under a name that is free or already holds the
    same config: a different config under a known name is a ConfigError, never first-wins.
    """
    from open_clip import factory

    cfg = json.loads(json.dumps(model_cfg))  # plain dicts and lists, as open_clip reads its JSON files
    known = factory._MODEL_CONFIGS.get(name)
    if known is None:
        factory._MODEL_CONFIGS[name] = cfg
    elif known != cfg:
        raise ConfigError(f"open_clip already has an architecture named {name!r} with another config "
                          f"({json.dumps(known, sort_keys=True)[:200]}...); give architecture.model a new name")
    return name


def _image_preprocess(card: ScorerCard) -> ImagePreprocess:
    spec = card.preprocessing
    if spec is None or spec.kind not in ("letterbox", "center_crop"):
        raise ConfigError(f"{card.source or card.name}: preprocessing.kind must be 'letterbox' or 'center_crop' for "
                          f"family {card.architecture.family!r}, got {None if spec is None else spec.kind!r}")
    return ImagePreprocess.from_spec(spec)


def _load_head(card: ScorerCard, local_files_only: bool | None) -> nn.Module | None:
    if card.architecture.head == "none":
        return None
    head = AestheticMLP(int((card.architecture.config or {}).get("head_input", 768)))
    if card.head_checkpoint is None:
        raise ConfigError(f"scorer {card.name!r}: head {card.architecture.head!r} needs head_checkpoint in the card")
    path = resolve_checkpoint(card.name, card.head_checkpoint, local_files_only)
    if path is not None:
        sd = load_state_dict(path, card.head_checkpoint.state_dict_key)
        head.load_state_dict(sd, strict=True)
    return head


@SCORER_FAMILIES.register("open_clip")
def build_open_clip(card: ScorerCard, local_files_only: bool | None = None, **kw) -> ClipScorer:
    """HPS v2/v2.1, Social Reward, CLIP score, LAION aesthetic and synth-hps (open_clip architecture)."""
    import open_clip

    arch = card.architecture
    path = resolve_checkpoint(card.name, card.checkpoint, local_files_only)
    folder_cfg = None if path is None or not Path(path).is_dir() else Path(path) / "open_clip_config.json"
    if folder_cfg is not None and folder_cfg.exists():
        model = open_clip.create_model(f"local-dir:{path}")
    else:
        if arch.config is not None:
            register_open_clip_config(arch.model, {k: v for k, v in arch.config.items() if k != "head_input"})
        if arch.model not in open_clip.list_models():
            raise ConfigError(f"scorer {card.name!r}: open_clip has no architecture {arch.model!r}; "
                              "give architecture.config or a known name (open_clip.list_models())")
        model = open_clip.create_model(arch.model, pretrained=None)
        if path is not None:
            sd = load_state_dict(Path(path), card.checkpoint.state_dict_key)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise InputError(f"scorer {card.name!r}: checkpoint {path} does not fit {arch.model}: {str(exc)[:300]}") from exc
    tokenizer = (word_tokenizer_beside(Path(path) if path else None, card.name) if arch.tokenizer == "word"
                 else open_clip.get_tokenizer(arch.model if arch.tokenizer == "open_clip" else arch.tokenizer))
    return ClipScorer(model, tokenizer, _image_preprocess(card), backend="open_clip",
                      formula=card.score.formula, head=_load_head(card, local_files_only), card=card, **kw)


@SCORER_FAMILIES.register("hf_clip")
def build_hf_clip(card: ScorerCard, local_files_only: bool | None = None, **kw) -> ClipScorer:
    """PickScore (transformers ``CLIPModel``; the processor's tokenizer, tensor image preprocessing)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    arch = card.architecture
    offline = is_offline(local_files_only)
    path = resolve_checkpoint(card.name, card.checkpoint, local_files_only)
    if path is None:
        if arch.config is None:
            raise ConfigError(f"scorer {card.name!r}: no weights and no architecture.config to build a random model from")
        model = CLIPModel(CLIPConfig(**arch.config))
    else:
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=offline)
        except OSError as exc:
            raise InputError(f"scorer {card.name!r}: cannot load CLIPModel from {path}: {exc}") from exc
    if arch.tokenizer == "word":
        tokenizer = word_tokenizer_beside(Path(path) if path else None, card.name).hf
    else:
        try:
            hf_tok = AutoTokenizer.from_pretrained(arch.tokenizer, local_files_only=offline)
        except OSError as exc:
            raise InputError(f"scorer {card.name!r}: tokenizer {arch.tokenizer!r} not available "
                             f"({'offline' if offline else 'download failed'}); download it once online: {exc}") from exc

        def tokenizer(texts):
            return hf_tok(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    return ClipScorer(model, tokenizer, _image_preprocess(card), backend="hf",
                      formula=card.score.formula, head=_load_head(card, local_files_only), card=card, **kw)
