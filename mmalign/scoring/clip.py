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

Images decoded from files (PNG/JPEG/WebP; ``metadata["path"]``) that need no pixel gradient go
through the reference's own PIL preprocessing where the scorer has one (``reference_preprocess``):
transformers' ``CLIPImageProcessor`` for PickScore (its ``infer_example`` calls the processor on PIL
images), open_clip's ``image_transform`` for centre-crop open_clip scorers (CLIP score, LAION
aesthetic: ``create_model_and_transforms``' preprocess). Everything else — generated tensors,
pixels that need gradients, video frames, HPS's letterbox — uses the tensor preprocessing of
:mod:`mmalign.scoring.preprocess`. Items of different sizes are preprocessed one by one, then batched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmalign.errors import ConfigError, InputError
from mmalign.media import IMAGE_EXTS, ImageBatch, MediaList
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


#: PIL images → preprocessed pixels ``[N, 3, S, S]``: a reference implementation's own image preprocessing
PilPreprocess = Callable[[list], torch.Tensor]


def from_image_file(media: ImageBatch, i: int) -> bool:
    """True if item ``i`` was decoded from an image file (its pixels are that file's 8-bit RGB)."""
    meta = media.metadata[i] if media.metadata else None
    return isinstance(meta, dict) and Path(str(meta.get("path", ""))).suffix.lower() in IMAGE_EXTS


def open_clip_pil_preprocess(spec: ImagePreprocess) -> PilPreprocess:
    """open_clip's eval transform (``open_clip/transform.py::image_transform``: Resize short side, CenterCrop,
    RGB, ToTensor, Normalize), as ``create_model_and_transforms`` returns it for a centre-crop model."""
    import open_clip

    transform = open_clip.image_transform(spec.size, is_train=False, mean=spec.mean, std=spec.std,
                                          resize_mode="shortest", interpolation=spec.mode)
    return lambda images: torch.stack([transform(im) for im in images])


def hf_pil_preprocess(image_processor: Callable) -> PilPreprocess:
    """A transformers image processor (PickScore: the ``AutoProcessor`` of ``infer_example``) on PIL images."""
    return lambda images: image_processor(images=images, return_tensors="pt")["pixel_values"]


def _pooled(out) -> torch.Tensor:
    """transformers ≥ 5 returns a ModelOutput whose ``pooler_output`` is the projected feature."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer(Scorer):
    """A scorer on a CLIP dual encoder; see the module docstring.

    ``backend``: ``"open_clip"`` (``encode_image``/``encode_text``, tokenizer returns ids) or
    ``"hf"`` (``get_image_features``/``get_text_features``, tokenizer returns a mapping of tensors,
    e.g. a ``BatchEncoding``). ``reference_preprocess``: the reference's PIL preprocessing, used for
    images decoded from files (see the module docstring); None = tensor preprocessing only.
    """

    modalities = ("image", "video")  # videos by frame aggregation (video.py)

    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess: ImagePreprocess, *, backend: str = "open_clip",
                 formula: str = "cosine", head: nn.Module | None = None, reference_preprocess: PilPreprocess | None = None,
                 **kw):
        if formula not in FORMULAS:
            raise InputError(f"unknown score formula {formula!r}; use one of {FORMULAS}")
        if formula == "aesthetic_mlp" and head is None:
            raise InputError("formula 'aesthetic_mlp' needs a head module")
        if backend not in ("open_clip", "hf"):
            raise InputError(f"unknown CLIP backend {backend!r}; use 'open_clip' or 'hf'")
        self.model = model.eval()
        self.head = None if head is None else head.eval()
        super().__init__(**kw)  # moves both to the device, casts the dual encoder to the compute dtype
        self.tokenizer, self.preprocess, self.backend, self.formula = tokenizer, preprocess, backend, formula
        self.reference_preprocess = reference_preprocess
        self.needs_prompts = formula != "aesthetic_mlp"

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.model, self.head) if m is not None]

    def compute_modules(self) -> list[nn.Module]:
        """The dual encoder; the aesthetic head (0.9M parameters) stays fp32 on the fp32 normalised embedding."""
        return [self.model]

    # -- the two towers -------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image embeddings of preprocessed pixels ``[B,3,S,S]``."""
        pixels = pixels.to(self.dtype)  # the one cast of the input; preprocessing ran in fp32
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
            tokens = tokens if isinstance(tokens, Mapping) else {"input_ids": tokens}
            feats = _pooled(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))
        index = torch.tensor([unique.index(p) for p in prompts], device=feats.device)
        return feats[index]

    def embeddings(self, media: ImageBatch, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_features(self.prepare(media)), self.text_features(texts)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    # -- scoring ---------------------------------------------------------------------------------
    def prepare(self, media: ImageBatch) -> torch.Tensor:
        """Preprocessed pixels ``[B,3,S,S]``: file images without gradients through ``reference_preprocess``,
        the rest through the tensor preprocessing."""
        pil = [] if self.reference_preprocess is None or media.pixels.requires_grad else \
            [i for i in range(len(media)) if from_image_file(media, i)]
        if not pil:
            return self.preprocess(media.pixels)
        rest = [i for i in range(len(media)) if i not in pil]
        parts = [self.reference_preprocess(media[pil].to_pil()).to(media.pixels.device, media.pixels.dtype)]
        if rest:
            parts.append(self.preprocess(media.pixels[rest]))
        order = torch.tensor(pil + rest, device=media.pixels.device)
        return torch.cat(parts)[torch.argsort(order)]

    def _score_items(self, items: MediaList, prompts: list[str]) -> torch.Tensor:
        """Each item preprocessed on its own (its own size), then one batch through the model."""
        return self._score_pixels(torch.cat([self.prepare(item) for item in items.items]), prompts)

    def _score_batch(self, media: ImageBatch, prompts: list[str]) -> torch.Tensor:
        return self._score_pixels(self.prepare(media), prompts)

    def _score_pixels(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = self.image_features(pixels)
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
    preprocess = _image_preprocess(card)
    reference = open_clip_pil_preprocess(preprocess) if preprocess.kind == "center_crop" else None
    return ClipScorer(model, tokenizer, preprocess, backend="open_clip", formula=card.score.formula,
                      head=_load_head(card, local_files_only), reference_preprocess=reference, card=card, **kw)


_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # what transformers' processors save


def _hf_image_processor(card: ScorerCard, path: Path | None, offline: bool) -> Callable:
    """The card's ``architecture.processor`` (a hub id or folder, loaded as PickScore's ``AutoProcessor``),
    else the checkpoint folder's processor config, else a ``CLIPImageProcessor`` built from
    ``preprocessing`` (short side to ``size``, centre crop, the card's mean and std)."""
    from transformers import AutoProcessor, CLIPImageProcessor

    source = card.architecture.processor
    if source is None and path is not None and any((Path(path) / f).exists() for f in _PROCESSOR_FILES):
        source = str(path)
    if source is None:
        spec = _image_preprocess(card)
        resample = {"bicubic": 3, "bilinear": 2}[spec.mode]  # PIL.Image.Resampling values
        return CLIPImageProcessor(size={"shortest_edge": spec.size}, crop_size={"height": spec.size, "width": spec.size},
                                  image_mean=list(spec.mean), image_std=list(spec.std), resample=resample)
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=offline)
    except OSError as exc:
        raise InputError(f"scorer {card.name!r}: image processor {source!r} not available "
                         f"({'offline' if offline else 'download failed'}); download it once online: {exc}") from exc
    return getattr(processor, "image_processor", processor)


@SCORER_FAMILIES.register("hf_clip")
def build_hf_clip(card: ScorerCard, local_files_only: bool | None = None, **kw) -> ClipScorer:
    """PickScore (transformers ``CLIPModel``; the processor's tokenizer; the processor's PIL preprocessing
    for image files, tensor preprocessing otherwise)."""
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
    reference = hf_pil_preprocess(_hf_image_processor(card, path, offline))
    return ClipScorer(model, tokenizer, _image_preprocess(card), backend="hf", formula=card.score.formula,
                      head=_load_head(card, local_files_only), reference_preprocess=reference, card=card, **kw)
