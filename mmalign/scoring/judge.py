"""VLM judge in the UnifiedReward style: pairwise and pointwise judgments parsed from text.

Prompts follow the structure of CodeGoat24/UnifiedReward@ff6f520 ``inference_qwen/image_generation/``
(pairwise rank and pointwise score instructions; the criteria sentences are written in our own
words here). Parsing uses mmalign's rules by default:

* numbers are compared as **numbers** ("10" > "9"), never as strings;
* an output that does not parse gives **NaN with** ``parsed=False`` — never a crash, never a
  silent default;
* the upstream fallbacks are available only when asked for: ``mode="unifiedreward"`` (pair: image 2
  only if the text contains "Image 2 is better than Image 1", else image 1; point: first digit run
  after the last "Final Score:", missing → 0) and ``mode="flow_grpo"`` (``Final Score:\\s*([1-5](\\.\\d+)?)``,
  divided by 5).

The model is any ``generate(text, images) -> str`` callable; :func:`load_qwen_vl` builds the
default one with transformers (Qwen2-VL / Qwen2.5-VL, e.g. ``CodeGoat24/UnifiedReward-qwen-7b``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mmalign.errors import ConfigError, InputError
from mmalign.media import ImageBatch, VideoBatch
from mmalign.scoring.base import SCORER_FAMILIES, Scorer, as_media, check_prompts, resolve_device, resolve_dtype
from mmalign.scoring.card import JudgeSpec, ScorerCard
from mmalign.scoring.weights import resolve_checkpoint

Generate = Callable[[str, list], str]

_CRITERIA = (
    "1. Alignment with the Caption: how completely and correctly the {media} shows the objects, attributes, counts "
    "and relations that the caption describes.\n"
    "2. Overall {Media} Quality: clarity, absence of artifacts or distortions, and visual coherence.\n"
)
_PAIR = (
    "You are given a text caption and two generated {media}s based on that caption. Your task is to evaluate and "
    "compare these {media}s based on two key criteria:\n" + _CRITERIA +
    "Compare both {media}s using the above criteria and select the one that better aligns with the caption while "
    "exhibiting superior visual quality.\n"
    "Provide a clear conclusion such as {conclusions}\n"
    "Your task is provided as follows:\nText Caption: [{prompt}]"
)
_CONCLUSIONS = {
    "pair_qwen": '"{M} 1 is better.", "{M} 2 is better." and "Both {media}s are equally good."',
    "pair_llava": '"{M} 1 is better than {M} 2.", "{M} 2 is better than {M} 1." and "Both {media}s are equally good."',
}
_POINT = (
    "You are given a text caption and a generated {media} based on that caption. Evaluate it based on two key "
    "criteria:\n" + _CRITERIA +
    "Extract key elements from the provided text caption, evaluate their presence in the generated {media} using the "
    "format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a "
    "score from 1 to {top} after 'Final Score:'.\n"
    "Your task is provided as follows:\nText Caption: [{prompt}]"
)
PAIR_TEMPLATES = tuple(_CONCLUSIONS)
POINT_TEMPLATES = {"point_1_5": 5, "point_1_10": 10}
PARSE_MODES = ("strict", "unifiedreward", "flow_grpo")


def build_pair_prompt(prompt: str, template: str = "pair_qwen", media: str = "image") -> str:
    """The pairwise-rank instruction for two images (or videos) of ``prompt``.

    The LLaVA variant starts with the two image placeholders ``'<image>\\n <image>\\n'``, as
    UnifiedReward's LLaVA inference scripts do.
    """
    if template not in _CONCLUSIONS:
        raise InputError(f"unknown pair template {template!r}; use one of {PAIR_TEMPLATES}")
    m = media.capitalize()
    concl = _CONCLUSIONS[template].format(M=m, media=media)
    text = _PAIR.format(media=media, Media=m, conclusions=concl, prompt=prompt)
    return ("<image>\n <image>\n" + text) if template == "pair_llava" else text


def build_point_prompt(prompt: str, template: str = "point_1_5", media: str = "image") -> str:
    """The pointwise-score instruction ("assign a score from 1 to 5|10 after 'Final Score:'")."""
    if template not in POINT_TEMPLATES:
        raise InputError(f"unknown point template {template!r}; use one of {tuple(POINT_TEMPLATES)}")
    return _POINT.format(media=media, Media=media.capitalize(), top=POINT_TEMPLATES[template], prompt=prompt)


@dataclass(frozen=True)
class Judgment:
    """One parsed judgment: ``value`` (NaN when not parsed), ``parsed`` flag and the raw ``text``."""

    value: float
    parsed: bool
    text: str


_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def parse_point_score(text: str, mode: str = "strict") -> Judgment:
    """The score after the last "Final Score:"; see the module docstring for the modes."""
    if mode not in PARSE_MODES:
        raise InputError(f"unknown parse mode {mode!r}; use one of {PARSE_MODES}")
    if mode == "flow_grpo":
        m = re.search(r"Final Score:\s*([1-5](?:\.\d+)?)", text)
        return Judgment(float(m.group(1)) / 5.0, True, text) if m else Judgment(math.nan, False, text)
    idx = text.rfind("Final Score:")
    tail = text[idx + len("Final Score:"):] if idx >= 0 else None
    if mode == "unifiedreward":
        m = re.search(r"\d+", tail) if tail is not None else None
        return Judgment(float(int(m.group())), True, text) if m else Judgment(0.0, False, text)
    m = re.match(r"\s*\**\s*(" + _NUMBER + ")", tail) if tail is not None else None
    return Judgment(float(m.group(1)), True, text) if m else Judgment(math.nan, False, text)


def parse_pair_choice(text: str, mode: str = "strict", media: str = "image") -> Judgment:
    """P(first ≻ second) from a pairwise answer: 1.0, 0.0, 0.5 for "equally good", NaN if unparseable.

    Strict mode takes the *last* conclusion in the text (reasoning may mention both before
    concluding). ``mode="unifiedreward"`` is the upstream rule: 0.0 only if the text contains
    "Image 2 is better than Image 1", otherwise 1.0 (ties and garbage go to image 1).
    """
    m = media.capitalize()
    if mode == "unifiedreward":
        second = f"{m} 2 is better than {m} 1" in text
        return Judgment(0.0 if second else 1.0, True, text)
    if mode != "strict":
        raise InputError(f"pairwise parse mode must be 'strict' or 'unifiedreward', got {mode!r}")
    pattern = re.compile(rf"{m} 1 is better|{m} 2 is better|equally good", re.IGNORECASE)
    hits = pattern.findall(text)
    if not hits:
        return Judgment(math.nan, False, text)
    last = hits[-1].lower()
    return Judgment(1.0 if last.endswith("1 is better") else 0.0 if last.endswith("2 is better") else 0.5, True, text)


def best_and_worst(scores: Sequence[float | str]) -> tuple[int, int]:
    """Indices of the highest and lowest *numeric* score, NaN/unparsed ignored (fixes upstream's
    string max: max(["9", "10"]) == "9")."""
    values = [float(s) for s in scores]
    valid = [i for i, v in enumerate(values) if not math.isnan(v)]
    if not valid:
        raise InputError("best_and_worst: no parsed score among the candidates; re-run the judge or drop this prompt")
    return max(valid, key=values.__getitem__), min(valid, key=values.__getitem__)


def _to_pil(pixels: torch.Tensor, size: int | None):
    from PIL import Image

    arr = (pixels.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr)
    return img.resize((size, size), Image.BICUBIC) if size else img


class JudgeScorer(Scorer):
    """A VLM judge: ``score`` = pointwise "Final Score", ``compare`` = pairwise rank (P(a ≻ b)).

    ``last_judgments`` keeps the parsed :class:`Judgment` objects of the latest call, so callers can
    count and inspect unparsed outputs (their values are NaN).
    """

    modalities = ("image", "video")
    native_video = True  # frames go to the VLM together, as the upstream video prompts do

    def __init__(self, generate: Generate, *, point_template: str = "point_1_5", pair_template: str = "pair_qwen",
                 point_mode: str = "strict", pair_mode: str = "strict", image_size: int | None = 512, max_frames: int = 8, **kw):
        super().__init__(**kw)
        build_point_prompt("", point_template), build_pair_prompt("", pair_template)  # validate names early
        if point_mode not in PARSE_MODES or pair_mode not in ("strict", "unifiedreward"):
            raise InputError(f"bad parse modes point_mode={point_mode!r} pair_mode={pair_mode!r}")
        self.generate, self.point_template, self.pair_template = generate, point_template, pair_template
        self.point_mode, self.pair_mode, self.image_size, self.max_frames = point_mode, pair_mode, image_size, max_frames
        self.last_judgments: list[Judgment] = []

    def _images(self, media: ImageBatch | VideoBatch, i: int) -> list:
        if isinstance(media, VideoBatch):
            t = media.pixels.shape[1]
            idx = torch.linspace(0, t - 1, min(t, self.max_frames)).round().long().tolist()
            return [_to_pil(media.pixels[i, j], self.image_size) for j in idx]
        return [_to_pil(media.pixels[i], self.image_size)]

    def _call(self, text: str, images: list) -> str:
        out = self.generate(text, images)
        if not isinstance(out, str):
            raise InputError(f"the judge's generate() must return a string, got {type(out).__name__}")
        return out

    def score(self, media, prompts=None, *, differentiable: bool = False, **kw) -> torch.Tensor:
        if differentiable:
            raise InputError(f"scorer {self.name!r} is a text-generating VLM judge and has no gradient; use a CLIP-family scorer")
        self.last_judgments = []
        return super().score(media, prompts, **kw)

    def _score_batch(self, media, prompts: list[str]) -> torch.Tensor:
        kind = media.modality
        out = []
        for i, p in enumerate(prompts):
            j = parse_point_score(self._call(build_point_prompt(p, self.point_template, kind), self._images(media, i)), self.point_mode)
            self.last_judgments.append(j)
            out.append(j.value)
        return torch.tensor(out, dtype=torch.float32)

    def compare(self, a, b, prompts=None, *, swap: bool = False, **kw) -> torch.Tensor:
        """P(a ≻ b) per pair from the pairwise prompt. ``swap=True`` also asks with the order reversed
        and averages P(a≻b) and 1 − P(b≻a) (cancels the judge's position bias); NaN if either is unparsed."""
        a, b = as_media(a), as_media(b)
        if len(a) != len(b) or a.modality != b.modality:
            raise InputError(f"compare: a has {len(a)} {a.modality} items, b has {len(b)} {b.modality}; pair like with like")
        self.check_modality(a)
        prompts = check_prompts(prompts, len(a), a)
        kind = a.modality
        self.last_judgments, out = [], []
        for i, p in enumerate(prompts):
            text = build_pair_prompt(p, self.pair_template, kind)
            j = parse_pair_choice(self._call(text, self._images(a, i) + self._images(b, i)), self.pair_mode, kind)
            self.last_judgments.append(j)
            v = j.value
            if swap:
                r = parse_pair_choice(self._call(text, self._images(b, i) + self._images(a, i)), self.pair_mode, kind)
                self.last_judgments.append(r)
                v = 0.5 * (v + 1.0 - r.value)
            out.append(v)
        return torch.tensor(out, dtype=torch.float32)


def load_qwen_vl(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 max_new_tokens: int = 512, local_files_only: bool = True) -> Generate:
    """A greedy ``generate(text, images)`` over a transformers Qwen2-VL / Qwen2.5-VL checkpoint folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=local_files_only)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=local_files_only)
    except OSError as exc:
        raise InputError(f"cannot load the VLM judge from {path}: {exc}") from exc
    model = model.to(device).eval()

    @torch.no_grad()
    def generate(text: str, images: list) -> str:
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[chat], images=images or None, return_tensors="pt").to(model.device)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    return generate


@SCORER_FAMILIES.register("vlm_judge")
def build_vlm_judge(card: ScorerCard, local_files_only: bool | None = None, *, generate: Generate | None = None,
                    **kw) -> JudgeScorer:
    """A :class:`JudgeScorer` over ``generate`` or, without it, over the card's Qwen-VL checkpoint."""
    j = card.judge or JudgeSpec()
    if generate is None:
        path = resolve_checkpoint(card.name, card.checkpoint, local_files_only)
        if path is None:
            raise ConfigError(f"scorer {card.name!r}: a VLM judge needs weights (checkpoint) or a generate= function")
        dev = resolve_device(kw.get("device", "auto"))
        kw["dtype"] = resolve_dtype(kw.get("dtype"), dev, what=f"judge {card.name!r}")  # a VLM: "auto" takes it as large
        generate = load_qwen_vl(str(path), dev, kw["dtype"], j.max_new_tokens, local_files_only=True)
    return JudgeScorer(generate, point_template=j.point_template, pair_template=j.pair_template,
                       image_size=j.image_size, max_frames=j.max_frames, card=card, **kw)
