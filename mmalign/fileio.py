"""Atomic file writes.

Every result, manifest, media file and weight file mmalign writes goes through :func:`atomic_write`: the
content is written to a hidden temporary file in the same folder, flushed to disk, and renamed over the
target (``os.replace`` is atomic on POSIX and Windows). A killed run therefore leaves the old file or the
new one, never half of one, and no temporary file on failure.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, fsync it, then rename it over ``path``.

    The temporary name keeps ``path``'s suffix, so writers that pick the format from the extension
    (PIL, soundfile, PyAV, ``numpy.save``) see the right one. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> Path:
    """Create a new empty hidden file next to ``path``, with a normal file's mode (0666 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON atomically; tensors become lists and paths strings."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines atomically."""
    return atomic_write_text(path, "".join(json.dumps(row, default=_json_default) + "\n" for row in rows))


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # torch tensors, numpy arrays and scalars
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
