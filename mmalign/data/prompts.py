"""The one prompt-file reader: a text file (one prompt per line) or a shipped prompt set by name.

Shipped sets live in ``assets/prompts/<name>.txt`` (:func:`prompt_sets` lists them), e.g.
``synth-image-train`` / ``synth-image-heldout``: every prompt of the synthetic world's grammar for
that modality and split.
"""

from __future__ import annotations

import difflib
import random
from pathlib import Path

from mmalign.errors import InputError
from mmalign.paths import asset_path


def prompt_sets() -> list[str]:
    """Names of the shipped prompt sets (``assets/prompts/*.txt``), sorted."""
    folder = asset_path("prompts")
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


def _resolve(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    names = prompt_sets()
    if str(source) in names:
        return asset_path("prompts", f"{source}.txt")
    near = difflib.get_close_matches(str(source), names, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise InputError(f"prompts {str(source)!r}: no such file and no shipped prompt set of that name; {hint}"
                     f"give a text file with one prompt per line or one of: {', '.join(names) or '(none shipped)'}")


def read_prompts(source: str | Path, n: int | None = None, seed: int | None = None) -> list[str]:
    """Prompts from ``source``: a UTF-8 text file (one prompt per line, blank lines skipped) or a shipped set name.

    ``n=None`` returns every prompt in file order. With ``n`` and no ``seed``: the first ``n`` (all of
    them when the file has fewer). With ``n`` and a ``seed``: ``n`` prompts drawn uniformly *with
    replacement* by ``random.Random(seed).choice``, so a small set can fill any ``n`` and the same
    seed always gives the same list.
    """
    path = _resolve(source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e}); save the prompt file as UTF-8") from e
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts in the file; write one prompt per line")
    if n is None:
        return prompts
    if n < 1:
        raise InputError(f"{path}: asked for {n} prompts; give n ≥ 1 (or None for all)")
    if seed is None:
        return prompts[:n]
    rng = random.Random(seed)
    return [rng.choice(prompts) for _ in range(n)]


__all__ = ["read_prompts", "prompt_sets"]
