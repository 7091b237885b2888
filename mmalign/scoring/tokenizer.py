"""A word-level tokenizer for the shipped synth scorers (and tiny test models).

The synth world's prompts use a closed vocabulary (``mmalign.synth.prompts.VOCABULARY``), so the
tiny scorers embed words, not CLIP's 49,408 BPE tokens (which alone would be 25 MB at width 128).
Layout matches CLIP's conventions so the stock text towers work unchanged: id 0 = padding,
1 = unknown word, then the words, then [SOT] and [EOT]; [EOT] is the *largest* id, so open_clip's
argmax pooling and transformers' ``eos_token_id`` pooling both read the end-of-text position.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch

from mmalign.errors import InputError

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class WordTokenizer:
    """``tok(texts) -> LongTensor [B, context_length]``: [SOT] words [EOT] 0…, truncated keeping [EOT]."""

    def __init__(self, words: Sequence[str], context_length: int = 16):
        self.words = list(dict.fromkeys(w.lower() for w in words))
        self.index = {w: i + 2 for i, w in enumerate(self.words)}
        self.sot_id = len(self.words) + 2
        self.eot_id = len(self.words) + 3
        self.vocab_size = len(self.words) + 4
        self.context_length = int(context_length)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in _WORD.findall(text.lower())]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text)][: n - 1] + [self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def hf(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """transformers-style inputs: ``input_ids`` and ``attention_mask``."""
        ids = self(texts)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def to_dict(self) -> dict:
        return {"kind": "word", "words": self.words, "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        return cls(d["words"], d.get("context_length", 16))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        return cls.from_dict(json.loads(Path(path).read_text()))


def word_tokenizer_beside(weights: Path | None, scorer: str) -> WordTokenizer:
    """The ``tokenizer.json`` saved next to a scorer's weights (in the folder, or beside the file)."""
    path = None if weights is None else (weights if weights.is_dir() else weights.parent) / "tokenizer.json"
    if path is None or not path.exists():
        raise InputError(f"scorer {scorer!r}: tokenizer 'word' needs tokenizer.json next to the weights (looked at {path})")
    return WordTokenizer.load(path)
