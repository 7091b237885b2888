"""HPS-style training and pairwise evaluation of CLIP-family (and CLAP) scorers.

Training (HPS v2, Wu et al. 2023; tgxs002/HPSv2@866735e ``train.py``): for each prompt, the logits
of its candidates are exp(logit_scale)·cos(image, prompt); the loss is the cross-entropy of the
softmax over the prompt's candidates against soft labels — a pair gives (1, 0), (0, 1) or
(0.5, 0.5) for a tie (:func:`mmalign.scoring.losses.preference_cross_entropy`). logit_scale is
clamped to [0, ln 100] as in HPS v2's ``train.py``.

HPS v2 and PickScore fine-tune a CLIP that contrastive pretraining already taught which caption goes
with which image. A scorer trained from scratch (the synthetic world's) can get the same grounding
from a :class:`CaptionSet` next to the pairs: each step also takes a batch of (item, caption) pairs
and adds ``caption_weight`` × the CLIP / CLAP contrastive loss of the items against the batch's
distinct captions (Radford et al. 2021, CLIP §2.3, the item → text half; Wu et al. 2023, CLAP eq. 3),
:func:`caption_logits`.

Data: :func:`read_pair_set` reads every preference format of :mod:`mmalign.data.pairs` (pairs JSONL,
rankings JSONL expanded into their n(n−1)/2 pairs, Pick-a-Pic parquet). Evaluation:
:func:`evaluate_pairs` reports ``pooled_accuracy`` (ImageReward-test convention: non-tied pairs,
predicted ties wrong).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from mmalign.data.pairs import RankingDataset, read_preferences
from mmalign.devices import resolve_dtype
from mmalign.errors import CheckpointError, ConfigError, InputError
from mmalign.fileio import atomic_write, atomic_write_json, atomic_write_text
from mmalign.media import concat
from mmalign.paths import asset_path
from mmalign.rng import owned_rng
from mmalign.scoring.base import Media, Scorer
from mmalign.scoring.losses import LN_100, pair_targets, preference_cross_entropy
from mmalign.scoring.metrics import pooled_pairwise_accuracy


@dataclass
class PairSet:
    """Preference pairs: items ``a[i]`` vs ``b[i]`` for ``prompts[i]``; label 1 = a wins, 0 = b, 0.5 = tie
    (soft labels in [0, 1], e.g. the mean vote of several annotators, are allowed for training)."""

    a: Media
    b: Media
    prompts: list[str]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.a)
        if not (len(self.b) == len(self.prompts) == len(self.labels) == n):
            raise InputError(f"PairSet: {len(self.a)} a, {len(self.b)} b, {len(self.prompts)} prompts, {len(self.labels)} labels; "
                             "all must match")
        bad = ~((self.labels >= 0) & (self.labels <= 1))
        if bad.any():
            raise InputError(f"PairSet: labels must be in [0, 1] (1 = a wins, 0 = b wins, 0.5 = tie); "
                             f"item {int(bad.nonzero()[0])} is {float(self.labels[bad][0])}")

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def cat(cls, sets: Sequence["PairSet"]) -> "PairSet":
        """One PairSet holding the pairs of ``sets`` in order."""
        return cls(concat([s.a for s in sets]), concat([s.b for s in sets]),
                   [p for s in sets for p in s.prompts], torch.cat([s.labels for s in sets]))


@dataclass
class CaptionSet:
    """Items with the captions they show (``media[i]`` shows ``prompts[i]``), for the contrastive term."""

    media: Media
    prompts: list[str]

    def __post_init__(self) -> None:
        if len(self.media) != len(self.prompts) or not self.prompts:
            raise InputError(f"CaptionSet: {len(self.media)} items and {len(self.prompts)} captions; give one caption per item, at least one")

    def __len__(self) -> int:
        return len(self.prompts)


def _stack(items: list[Media], where: str, what: str) -> Media:
    """One batch of one-item batches, or a MediaList where their sizes differ (each item is then
    preprocessed on its own by the scorer); an InputError naming the first item of another modality."""
    first = items[0]
    for i, m in enumerate(items):
        if m.modality != first.modality:
            raise InputError(f"{where}: {what} of pair {i} is {m.modality}, of pair 0 {first.modality}; "
                             "all media must be of one modality")
    return concat(items)


def read_pair_set(path: str | Path, *, resolution: int | None = None) -> PairSet:
    """Preference data as a :class:`PairSet` (``a`` = chosen, ``b`` = rejected, label P(a ≻ b), ties kept as 0.5).

    ``path`` is anything :func:`mmalign.data.pairs.read_preferences` reads: a pairs JSONL
    ``{prompt, chosen, rejected, label}``, a rankings JSONL ``{prompt, items, scores}`` (every ranked
    pair; higher score = better) or Pick-a-Pic parquet. Media are decoded into memory; items of
    different sizes make a :class:`~mmalign.media.MediaList` (``resolution`` resizes and centre-crops
    images and videos to a square of that side instead).
    """
    data = read_preferences(path, ties="keep", resolution=resolution)
    if isinstance(data, RankingDataset):
        data = data.to_pairs("all", ties="keep")
    if not len(data):
        raise InputError(f"{path}: no pairs (every ranking's items score the same); give data with preferences")
    a = _stack([data.load(p.chosen) for p in data], data.source, "the chosen item")
    b = _stack([data.load(p.rejected) for p in data], data.source, "the rejected item")
    return PairSet(a, b, [p.prompt for p in data], torch.tensor([p.label for p in data]))


def _logit_scale(scorer: Scorer) -> torch.nn.Parameter | None:
    model = getattr(scorer, "model", None)
    for name in ("logit_scale", "logit_scale_a"):
        p = getattr(model, name, None)
        if isinstance(p, torch.nn.Parameter):
            return p
    return None


def pair_logits(scorer: Scorer, a: Media, b: Media, prompts: list[str]) -> torch.Tensor:
    """``[N, 2]`` logits exp(logit_scale)·cos for (a, b) — or the scorer's own scaled score."""
    both = concat([a, b])
    s = scorer.score(both, prompts + prompts, batch_size=len(both), differentiable=True, progress=False)
    scale = _logit_scale(scorer)
    if getattr(scorer, "formula", "cosine") in ("cosine",) and scale is not None:
        s = scale.exp() * s
    return torch.stack(s.split(len(a)), dim=1)


def caption_logits(scorer: Scorer, media: Media, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, U]`` logits exp(logit_scale)·cos of each item against each *distinct* caption of ``captions`` (one
    per item), and the ``[B]`` index of each item's own caption: the item → text half of the CLIP/CLAP loss."""
    unique = list(dict.fromkeys(captions))
    items, texts = scorer.embeddings(media, unique)
    scale = _logit_scale(scorer)
    cos = torch.nn.functional.normalize(items.float(), dim=-1) @ torch.nn.functional.normalize(texts.float(), dim=-1).T
    target = torch.tensor([unique.index(c) for c in captions], device=cos.device)
    return (scale.exp() if scale is not None else 1.0) * cos, target


def train_scorer(scorer: Scorer, pairs: PairSet, *, steps: int = 1000, batch_size: int = 64, lr: float = 3e-4,
                 weight_decay: float = 0.05, warmup: int = 50, seed: int = 0, progress: bool = True,
                 log: Callable[[str], None] = print, log_every: int = 100, eval_fn: Callable[[], dict] | None = None,
                 captions: CaptionSet | None = None, caption_weight: float = 1.0) -> list[float]:
    """Fine-tune all parameters of ``scorer.model`` on ``pairs`` with AdamW + cosine schedule; returns losses.

    With ``captions``, each step adds ``caption_weight`` × the contrastive loss of ``batch_size`` captioned items
    (:func:`caption_logits`) to the preference loss.

    Batches are drawn by ``random.Random(seed)``; torch's RNG is seeded with ``seed`` inside a fork,
    so the caller's random state is left untouched.
    """
    from tqdm.auto import tqdm

    model = getattr(scorer, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"scorer {scorer.name!r} has no trainable .model")
    if steps < 1 or batch_size < 1 or len(pairs) == 0:
        raise InputError(f"train_scorer: need steps ≥ 1, batch_size ≥ 1 and at least one pair; got steps={steps}, "
                         f"batch_size={batch_size}, {len(pairs)} pairs")
    if scorer.dtype != torch.float32:
        raise ConfigError(f"train_scorer: scorer {scorer.name!r} holds {scorer.dtype} weights; training keeps fp32 master "
                          "weights: load it with dtype='fp32' (on CUDA the forward runs under bf16/fp16 autocast)")
    device = next(model.parameters()).device
    # CUDA: the forward under autocast (fp32 weights, as before); CPU: fp32 (autocast is slower than fp32 there)
    amp = torch.autocast("cuda", dtype=resolve_dtype(None, device)) if device.type == "cuda" else contextlib.nullcontext()
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    scale = _logit_scale(scorer)
    targets = pair_targets(pairs.labels)
    losses: list[float] = []
    model.train()
    with owned_rng(seed, device):
        for step in tqdm(range(steps), desc=f"train {scorer.name}", disable=not progress):
            idx = rng.sample(range(len(pairs)), min(batch_size, len(pairs)))
            with amp:
                logits = pair_logits(scorer, pairs.a[idx], pairs.b[idx], [pairs.prompts[i] for i in idx])
            loss = preference_cross_entropy(logits.float(), targets[idx].to(logits.device))
            if captions is not None:
                j = rng.sample(range(len(captions)), min(batch_size, len(captions)))
                with amp:
                    c_logits, c_target = caption_logits(scorer, captions.media[j], [captions.prompts[i] for i in j])
                loss = loss + caption_weight * torch.nn.functional.cross_entropy(c_logits.float(), c_target)
            if not torch.isfinite(loss):
                raise CheckpointError(f"train_scorer: non-finite loss at step {step}; lower the learning rate (lr={lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if scale is not None:
                with torch.no_grad():
                    scale.clamp_(0.0, LN_100)
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                extra = ""
                if eval_fn is not None:
                    model.eval()
                    extra = " " + " ".join(f"{k}={v:.4f}" for k, v in eval_fn().items())
                    model.train()
                log(f"step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f}{extra}")
    model.eval()
    return losses


def evaluate_pairs(scorer: Scorer, pairs: PairSet, batch_size: int = 128) -> dict[str, float]:
    """``pooled_accuracy``: ImageReward-test convention on held-out pairs (ties dropped, predicted ties wrong)."""
    sa = scorer.score(pairs.a, pairs.prompts, batch_size=batch_size, progress=False)
    sb = scorer.score(pairs.b, pairs.prompts, batch_size=batch_size, progress=False)
    return {"pooled_accuracy": pooled_pairwise_accuracy(sa.cpu(), sb.cpu(), pairs.labels)}


def save_open_clip_folder(scorer, model_cfg: dict, out) -> None:
    """Weights (``open_clip_model.safetensors``), ``open_clip_config.json`` and the word tokenizer if any —
    a folder ``open_clip.create_model('local-dir:…')`` and ``load_scorer`` both read."""
    from safetensors.torch import save_file

    from mmalign.scoring.tokenizer import WordTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in scorer.model.state_dict().items()}
    atomic_write(out / "open_clip_model.safetensors", lambda tmp: save_file(sd, str(tmp)))
    files = {"open_clip_config.json": {"model_cfg": model_cfg, "preprocess_cfg": {"size": scorer.preprocess.size}}}
    if isinstance(scorer.tokenizer, WordTokenizer):
        files["tokenizer.json"] = scorer.tokenizer.to_dict()
    for name, obj in files.items():
        atomic_write_json(out / name, obj)


def save_trained(scorer, out, report: dict) -> None:
    """Save a trained open_clip-family scorer with a card (``out/card.yaml``, checkpoint source local)."""
    import open_clip
    import yaml

    out = Path(out)
    card = scorer.card
    cfg = open_clip.get_model_config(card.architecture.model) or card.architecture.config
    if cfg is None:
        folder_cfg = Path(str(card.checkpoint.path or "")) / "open_clip_config.json"
        src = folder_cfg if folder_cfg.exists() else None
        if src is None and card.checkpoint.source == "shipped":
            src = asset_path(card.checkpoint.path, "open_clip_config.json")
        if src is None or not Path(src).exists():
            raise InputError(f"save_trained: cannot find the architecture config of {card.name!r}")
        cfg = json.loads(Path(src).read_text(encoding="utf-8"))["model_cfg"]
    save_open_clip_folder(scorer, cfg, out)
    data = card.model_dump(mode="json", exclude_none=True)
    data["name"] = f"{card.name}-finetuned"
    data["checkpoint"] = {"source": "local", "path": str(out.resolve())}
    atomic_write_text(out / "card.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    atomic_write_json(out / "train_report.json", report)
