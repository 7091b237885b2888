"""mmalign: align generative models of images, video and music to human preferences.

The public API is loaded lazily, so ``import mmalign`` is fast and works before every area exists::

    from mmalign import load_generator, load_scorer, combine, train, merge, benchmark
    from mmalign import ImageBatch, VideoBatch, AudioBatch, load_media, save_media
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mmalign")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.1.0"

#: public name -> the module that defines it (``module:attribute`` where the names differ)
_API: dict[str, str] = {
    "load_generator": "mmalign.generators",
    "load_scorer": "mmalign.scoring",
    "combine": "mmalign.scoring",
    "ImageBatch": "mmalign.media",
    "VideoBatch": "mmalign.media",
    "AudioBatch": "mmalign.media",
    "load_media": "mmalign.media",
    "save_media": "mmalign.media",
    "train": "mmalign.align.trainer",
    "merge": "mmalign.align.merge",
    "benchmark": "mmalign.bench:run_benchmark",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'mmalign' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        value = getattr(module, attribute or name)
    except AttributeError:
        raise AttributeError(f"mmalign.{name} is not built yet: {module_name} does not define {attribute or name!r}") from None
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
