"""Where the shipped folders (``scorers/``, ``recipes/``, ``assets/``) live.

From a checkout (or an editable install) they sit at the repository root; from a wheel they are
copied into ``mmalign/_shipped/`` by ``setup.py``. Both layouts are looked up here, in one place.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """Return the folder ``name`` (``"scorers"``, ``"recipes"`` or ``"assets"``) of this installation."""
    for candidate in (_PACKAGE / "_shipped" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    return _PACKAGE.parent / name


def asset_path(*parts: str) -> Path:
    """Path of a file or folder under ``assets/``."""
    return shipped_dir("assets").joinpath(*parts)
