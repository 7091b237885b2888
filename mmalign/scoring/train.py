"""HPS-style training and pairwise evaluation of CLIP-family (and CLAP) scorers.

Training (reference/scorers.md §2.6, §4): for each prompt, the logits of its candidates are
exp(logit_scale)·cos(image, prompt); the loss is the cross-entropy of the softmax over the
prompt's candidates against soft labels — a pair gives (1, 0), (0, 1) or (0.5, 0.5) for a tie
(:func:`mmalign.scoring.losses.preference_cross_entropy`). Rankings are expanded into their
n(n−1)/2 pairs. logit_scale is clamped to [0, ln 100] as in HPS v2's ``train.py``.

Evaluation reports each convention under its own name (S14): ``hpdv2_inversion`` (mean per-prompt
inversion score, S7; needs rankings) and ``pooled_accuracy`` (ImageReward-test: non-tied pairs,
predicted ties wrong).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mmalign.errors import CheckpointError, InputError
from mmalign.fileio import atomic_write, atomic_write_json, atomic_write_text
from mmalign.scoring.base import Media, Scorer
from mmalign.scoring.losses import LN_100, pair_targets, preference_cross_entropy
from mmalign.scoring.metrics import hpdv2_accuracy, pooled_pairwise_accuracy


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
        return cls(type(sets[0].a).cat([s.a for s in sets]), type(sets[0].b).cat([s.b for s in sets]),
                   [p for s in sets for p in s.prompts], torch.cat([s.labels for s in sets]))


def rankings_to_pairs(group: Media, prompt: str, ranks: Sequence[float]) -> PairSet:
    """All n(n−1)/2 pairs of one ranked group (lower rank = better; equal ranks = tie)."""
    idx = list(itertools.combinations(range(len(group)), 2))
    i, j = [p[0] for p in idx], [p[1] for p in idx]
    lab = torch.tensor([1.0 if ranks[x] < ranks[y] else 0.0 if ranks[x] > ranks[y] else 0.5 for x, y in idx])
    return PairSet(group[i], group[j], [prompt] * len(idx), lab)


def _logit_scale(scorer: Scorer) -> torch.nn.Parameter | None:
    model = getattr(scorer, "model", None)
    for name in ("logit_scale", "logit_scale_a"):
        p = getattr(model, name, None)
        if isinstance(p, torch.nn.Parameter):
            return p
    return None


def pair_logits(scorer: Scorer, a: Media, b: Media, prompts: list[str]) -> torch.Tensor:
    """``[N, 2]`` logits exp(logit_scale)·cos for (a, b) — or the scorer's own scaled score."""
    both = type(a).cat([a, b])
    s = scorer.score(both, prompts + prompts, batch_size=len(both), differentiable=True, progress=False)
    scale = _logit_scale(scorer)
    if getattr(scorer, "formula", "cosine") in ("cosine",) and scale is not None:
        s = scale.exp() * s
    return torch.stack(s.split(len(a)), dim=1)


def train_scorer(scorer: Scorer, pairs: PairSet, *, steps: int = 1000, batch_size: int = 64, lr: float = 3e-4,
                 weight_decay: float = 0.05, warmup: int = 50, seed: int = 0, progress: bool = True,
                 log: Callable[[str], None] = print, log_every: int = 100, eval_fn: Callable[[], dict] | None = None) -> list[float]:
    """Fine-tune all parameters of ``scorer.model`` on ``pairs`` with AdamW + cosine schedule; returns losses."""
    from tqdm.auto import tqdm

    model = getattr(scorer, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"scorer {scorer.name!r} has no trainable .model")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    scale = _logit_scale(scorer)
    targets = pair_targets(pairs.labels)
    losses: list[float] = []
    model.train()
    for step in tqdm(range(steps), desc=f"train {scorer.name}", disable=not progress):
        idx = rng.sample(range(len(pairs)), min(batch_size, len(pairs)))
        logits = pair_logits(scorer, pairs.a[idx], pairs.b[idx], [pairs.prompts[i] for i in idx])
        loss = preference_cross_entropy(logits, targets[idx].to(logits.device))
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


def evaluate_rankings(scorer: Scorer, groups: Sequence[Media], prompts: Sequence[str],
                      ranks: Sequence[Sequence[float]], batch_size: int = 128) -> dict[str, float]:
    """``hpdv2_inversion``: HPD v2 metric (S7) — mean over prompts of 1 − discordant/(n(n−1)/2)."""
    preds = [scorer.score(g, p, batch_size=batch_size, progress=False).cpu().tolist() for g, p in zip(groups, prompts)]
    return {"hpdv2_inversion": hpdv2_accuracy(preds, ranks)}


# -- data files and saving ---------------------------------------------------------------------------
def _image_from_bytes(data: bytes, where: str) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{where}: not a decodable image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def read_pairs(path) -> PairSet:
    """Image pairs from a Pick-a-Pic-style parquet (``caption, jpg_0, jpg_1, label_0``) or a JSONL of
    ``{prompt, a, b, label}`` with image paths relative to the file. Images must share one size."""
    import json
    from pathlib import Path

    from mmalign.media import ImageBatch, load_image

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such pairs file")
    a, b, prompts, labels = [], [], [], []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path).to_pydict()
        missing = [c for c in ("caption", "jpg_0", "jpg_1", "label_0") if c not in t]
        if missing:
            raise InputError(f"{path}: missing Pick-a-Pic column(s) {missing}")
        for i in range(len(t["caption"])):
            a.append(_image_from_bytes(t["jpg_0"][i], f"{path} row {i} jpg_0"))
            b.append(_image_from_bytes(t["jpg_1"][i], f"{path} row {i} jpg_1"))
            prompts.append(t["caption"][i])
            labels.append(float(t["label_0"][i]))
    else:
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                a.append(load_image(path.parent / row["a"]).pixels[0])
                b.append(load_image(path.parent / row["b"]).pixels[0])
                prompts.append(row["prompt"])
                labels.append(float(row["label"]))
            except (KeyError, json.JSONDecodeError) as e:
                raise InputError(f"{path}:{i}: a pair row needs prompt, a, b, label ({e})") from None
    if not prompts:
        raise InputError(f"{path}: no pairs")
    sizes = {tuple(x.shape) for x in a + b}
    if len(sizes) != 1:
        raise InputError(f"{path}: images have different sizes {sorted(sizes)[:4]}; resize them to one size first")
    return PairSet(ImageBatch(torch.stack(a)), ImageBatch(torch.stack(b)), prompts, torch.tensor(labels))


def save_open_clip_folder(scorer, model_cfg: dict, out) -> None:
    """Weights (``open_clip_model.safetensors``), ``open_clip_config.json`` and the word tokenizer if any —
    a folder ``open_clip.create_model('local-dir:…')`` and ``load_scorer`` both read."""
    from pathlib import Path

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
    import json
    from pathlib import Path

    import open_clip
    import yaml

    out = Path(out)
    card = scorer.card
    cfg = open_clip.get_model_config(card.architecture.model) or card.architecture.config
    if cfg is None:
        folder_cfg = Path(str(card.checkpoint.path or "")) / "open_clip_config.json"
        src = folder_cfg if folder_cfg.exists() else None
        if src is None and card.checkpoint.source == "shipped":
            from mmalign.paths import asset_path

            src = asset_path(card.checkpoint.path, "open_clip_config.json")
        if src is None or not Path(src).exists():
            raise InputError(f"save_trained: cannot find the architecture config of {card.name!r}")
        cfg = json.loads(Path(src).read_text())["model_cfg"]
    save_open_clip_folder(scorer, cfg, out)
    data = card.model_dump(mode="json", exclude_none=True)
    data["name"] = f"{card.name}-finetuned"
    data["checkpoint"] = {"source": "local", "path": str(out.resolve())}
    atomic_write_text(out / "card.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    atomic_write_json(out / "train_report.json", report)
