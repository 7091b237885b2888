"""Build the tokenizers the tiny and synth generators ship with (``assets/tokenizers/``).

``python -m mmalign.generators.make_tokenizer`` writes:

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
import os
import tempfile
from pathlib import Path

from mmalign.paths import asset_path

#: Words of the synth grammar, used when ``mmalign.synth.prompts.VOCABULARY`` is not importable.
FALLBACK_WORDS = (
    "red green blue yellow purple orange circle circles square squares triangle triangles a an two three one "
    "left right of above below moving static turning into melody fast slow high low mid on sine square sawtooth "
    "triangle wave synth up down and the with"
).split()

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
#: printable ASCII without space; GPT-2's byte-to-unicode map leaves these unchanged
PRINTABLE = [chr(c) for c in range(33, 127)]


def grammar_words() -> list[str]:
    """The grammar's words (synth VOCABULARY ∪ fallback list), sorted."""
    words = set(FALLBACK_WORDS)
    try:
        from mmalign.synth.prompts import VOCABULARY

        words |= set(VOCABULARY)
    except ImportError:
        pass
    return sorted(w.lower() for w in words)


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


def _atomic_dir_write(target: Path, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(tmp, 0o755)
    write(tmp)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        os.replace(target, old)
        os.replace(tmp, target)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, target)


def build_clip_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config of the synth CLIP tokenizer."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(words or grammar_words())

    def write(tmp: Path) -> None:
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=0, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
        tok.save_pretrained(tmp)

    _atomic_dir_write(folder, write)


def build_t5_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    """Write the synth T5 tokenizer (Unigram, built in-process, no sentencepiece model needed)."""
    from transformers import T5Tokenizer

    tok = T5Tokenizer(vocab=t5_vocab(words or grammar_words()), extra_ids=0, model_max_length=64)
    _atomic_dir_write(folder, tok.save_pretrained)


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
