"""Build the tokenizers the tiny and synth generators ship with (``assets/tokenizers/``).

``python -m mmalign.zoo.make_tokenizer`` writes:

* ``clip-synth/`` — a real byte-level BPE :class:`~transformers.CLIPTokenizer` (``vocab.json`` +
  ``merges.txt``): every printable ASCII character with and without the end-of-word marker ``</w>``,
  plus right-to-left merges that make each word of the synth grammar one token
  (``e d</w>`` → ``ed</w>``, ``r ed</w>`` → ``red</w>``). Unknown words fall back to characters
  (or a shared word ending such as ``ing</w>``).
* ``t5-synth/`` — a :class:`~transformers.T5Tokenizer` over a Unigram model with one piece per grammar
  word (``▁red``) and single characters as fallback, for the T5 encoders (Stable Audio, Wan).

Both vocabularies stay under 1000 entries. The script is deterministic; rerun it after the grammar grows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmalign.checkpoint import atomic_folder
from mmalign.paths import asset_path
from mmalign.synth.prompts import VOCABULARY

#: Words the tokenizers keep besides the grammar's ``VOCABULARY`` (articles, number words, ...), so
#: prompts written by hand around the grammar stay one token per word
EXTRA_WORDS = "an and into one orange the three wave with".split()

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
#: printable ASCII without space; GPT-2's byte-to-unicode map leaves these unchanged
PRINTABLE = [chr(c) for c in range(33, 127)]


def grammar_words() -> list[str]:
    """The words of the tokenizers (the grammar's ``VOCABULARY`` ∪ :data:`EXTRA_WORDS`), sorted."""
    return sorted(w.lower() for w in set(EXTRA_WORDS) | set(VOCABULARY))


def clip_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP BPE vocabulary and merges: characters, then one right-to-left merge chain per word.

    Chains grow the word-final token leftwards (``e d</w>`` → ``ed</w>``, ``r ed</w>`` → ``red</w>``).
    Every merge has a right side ending in ``</w>``, so inside a word only the next step of its own
    chain can ever apply: grammar words always become one token, whatever the merge order.
    """
    tokens: list[str] = [CLIP_BOS, CLIP_EOS]
    tokens += PRINTABLE + [c + "</w>" for c in PRINTABLE]
    merges: list[str] = []
    seen = set(tokens)
    for word in words:
        right = word[-1] + "</w>"
        for left in reversed(word[:-1]):
            merge = f"{left} {right}"
            right = left + right
            if merge not in merges:
                merges.append(merge)
            if right not in seen:
                seen.add(right)
                tokens.append(right)
    return {t: i for i, t in enumerate(tokens)}, merges


def t5_vocab(words: list[str]) -> list[tuple[str, float]]:
    """Unigram pieces: specials, whole words (``▁word``, likely), then single characters (unlikely)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in words]
    pieces += [(c, -8.0) for c in PRINTABLE]
    return pieces


def build_clip_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config of the synth CLIP tokenizer."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(words or grammar_words())

    def write(tmp: Path) -> None:
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=0, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
        tok.save_pretrained(tmp)

    atomic_folder(folder, write)


def build_t5_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    """Write the synth T5 tokenizer (Unigram, built in-process, no sentencepiece model needed)."""
    from transformers import T5Tokenizer

    tok = T5Tokenizer(vocab=t5_vocab(words or grammar_words()), extra_ids=0, model_max_length=64)
    atomic_folder(folder, tok.save_pretrained)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=asset_path("tokenizers"), help="folder for clip-synth/ and t5-synth/")
    args = parser.parse_args(argv)
    words = grammar_words()
    build_clip_tokenizer(args.out / "clip-synth", words)
    build_t5_tokenizer(args.out / "t5-synth", words)
    print(f"wrote {args.out / 'clip-synth'} and {args.out / 't5-synth'} ({len(words)} words)")


if __name__ == "__main__":
    main()
