"""Where the shipped folders (``scorers/``, ``recipes/``, ``assets/``) live.

From a checkout (or an editable install) they sit at the repository root; from a wheel they are
copied into ``mmalign/_shipped/`` by ``setup.py``. Both layouts are looked up here, in one place.
"""

from __future__ import annotations

import os
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


def is_offline(local_files_only: bool | None = None) -> bool:
    """``local_files_only`` if given, else the environment (``MMALIGN_OFFLINE`` or ``HF_HUB_OFFLINE`` set to a true
    value): hub ids then resolve from local files and caches only."""
    if local_files_only is not None:
        return bool(local_files_only)
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("MMALIGN_OFFLINE", "HF_HUB_OFFLINE"))
