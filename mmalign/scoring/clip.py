"""CLIP-family scorers: HPS v2/v2.1, PickScore, Social Reward, CLIP score, LAION aesthetic, synth-hps.

One class, :class:`ClipScorer`, holds a dual encoder (open_clip ``CLIP`` or transformers
``CLIPModel``), its tokenizer, its tensor preprocessing and a formula (reference/scorers.md):

* ``cosine`` — cos(f_img, f_txt) of L2-normalised features; HPS v2 ``score()`` (§2.4, S1: no
  logit scale, no ×100), Social Reward (§5), ImageReward's CLIPScore (§3.4);
* ``scaled_cosine`` — exp(logit_scale)·cos; PickScore (§4, S10); :meth:`ClipScorer.probs` gives
  the softmax over one prompt's images;
* ``100cosine`` — torchmetrics' per-sample CLIP score (S13; the clamp at 0 happens *after*
  averaging, see :func:`mmalign.scoring.metrics.clip_score_torchmetrics`);
* ``aesthetic_mlp`` — the LAION improved-aesthetic head on the **L2-normalised** image embedding
  (§7, S11); prompts are not used.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmalign.errors import InputError
from mmalign.media import ImageBatch
from mmalign.scoring.base import Scorer, as_media, check_prompts
from mmalign.scoring.card import ScorerCard
from mmalign.scoring.preprocess import ImagePreprocess
from mmalign.scoring.tokenizer import WordTokenizer
from mmalign.scoring.weights import load_state_dict

FORMULAS = ("cosine", "scaled_cosine", "100cosine", "aesthetic_mlp")


class AestheticMLP(nn.Module):
    """LAION improved-aesthetic-predictor head (§7): 768→1024→128→64→16→1, dropouts, **no activations**."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def aesthetic_score(embedding: torch.Tensor, head: nn.Module, normalize: bool = True) -> torch.Tensor:
    """mlp(f / ‖f‖₂) → ``[B]`` (S11). ``normalize=False`` reproduces the known failure (scores of 20–30)."""
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
        """PickScore probabilities: softmax of the scores of one prompt's images (sums to 1, S10)."""
        media = as_media(media)
        check_prompts(prompt, len(media))
        return torch.softmax(self.score(media, prompt, **kw), dim=0)


# -- building from a card ----------------------------------------------------------------------------
def register_open_clip_config(name: str, model_cfg: dict) -> str:
    """Register an architecture config with open_clip (``open_clip.add_model_config``) under ``name``."""
    import open_clip

    if name in open_clip.list_models():
        return name
    folder = Path(tempfile.mkdtemp(prefix="mmalign_open_clip_"))
    (folder / f"{name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(folder)
    return name


def _word_tokenizer(folder: Path | None, card: ScorerCard) -> WordTokenizer:
    path = None if folder is None else (folder if folder.is_dir() else folder.parent) / "tokenizer.json"
    if path is None or not path.exists():
        raise InputError(f"scorer {card.name!r}: tokenizer 'word' needs tokenizer.json next to the weights (looked at {path})")
    return WordTokenizer.load(path)


def _load_head(card: ScorerCard, local_files_only: bool | None) -> nn.Module | None:
    if card.architecture.head == "none":
        return None
    from mmalign.scoring.weights import resolve_checkpoint

    head = AestheticMLP(int((card.architecture.config or {}).get("head_input", 768)))
    if card.head_checkpoint is None:
        raise InputError(f"scorer {card.name!r}: head {card.architecture.head!r} needs head_checkpoint in the card")
    path = resolve_checkpoint(card.name, card.head_checkpoint, local_files_only)
    if path is not None:
        sd = load_state_dict(path, card.head_checkpoint.state_dict_key)
        head.load_state_dict(sd, strict=True)
    return head


def build_open_clip(card: ScorerCard, path: Path | None, local_files_only: bool | None = None, **kw) -> ClipScorer:
    """HPS v2/v2.1, Social Reward, CLIP score, LAION aesthetic and synth-hps (open_clip architecture)."""
    import open_clip

    arch = card.architecture
    folder_cfg = None if path is None or not Path(path).is_dir() else Path(path) / "open_clip_config.json"
    if folder_cfg is not None and folder_cfg.exists():
        model = open_clip.create_model(f"local-dir:{path}")
    else:
        if arch.config is not None:
            register_open_clip_config(arch.model, {k: v for k, v in arch.config.items() if k != "head_input"})
        if arch.model not in open_clip.list_models():
            raise InputError(f"scorer {card.name!r}: open_clip has no architecture {arch.model!r}; "
                             "give architecture.config or a known name (open_clip.list_models())")
        model = open_clip.create_model(arch.model, pretrained=None)
        if path is not None:
            sd = load_state_dict(Path(path), card.checkpoint.state_dict_key)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise InputError(f"scorer {card.name!r}: checkpoint {path} does not fit {arch.model}: {str(exc)[:300]}") from exc
    tokenizer = (_word_tokenizer(Path(path) if path else None, card) if arch.tokenizer == "word"
                 else open_clip.get_tokenizer(arch.model if arch.tokenizer == "open_clip" else arch.tokenizer))
    return ClipScorer(model, tokenizer, ImagePreprocess.from_spec(card.preprocessing), backend="open_clip",
                      formula=card.score.formula, head=_load_head(card, local_files_only), card=card, **kw)


def build_hf_clip(card: ScorerCard, path: Path | str | None, local_files_only: bool | None = None, **kw) -> ClipScorer:
    """PickScore (transformers ``CLIPModel``; the processor's tokenizer, tensor image preprocessing)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from mmalign.scoring.weights import is_offline

    arch = card.architecture
    offline = is_offline(local_files_only)
    if path is None:
        if arch.config is None:
            raise InputError(f"scorer {card.name!r}: no weights and no architecture.config to build a random model from")
        model = CLIPModel(CLIPConfig(**arch.config))
    else:
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=offline)
        except OSError as exc:
            raise InputError(f"scorer {card.name!r}: cannot load CLIPModel from {path}: {exc}") from exc
    if arch.tokenizer == "word":
        word = _word_tokenizer(Path(path) if path else None, card)
        tokenizer = word.hf
    else:
        try:
            hf_tok = AutoTokenizer.from_pretrained(arch.tokenizer, local_files_only=offline)
        except OSError as exc:
            raise InputError(f"scorer {card.name!r}: tokenizer {arch.tokenizer!r} not available "
                             f"({'offline' if offline else 'download failed'}); download it once online: {exc}") from exc

        def tokenizer(texts):
            return hf_tok(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    return ClipScorer(model, tokenizer, ImagePreprocess.from_spec(card.preprocessing), backend="hf",
                      formula=card.score.formula, head=_load_head(card, local_files_only), card=card, **kw)
