"""Where the parity tests find a reference project's own module code: an unpacked wheel named by an
environment variable (``.ci/run`` downloads and unpacks VBench's and pyiqa's). In CI (``MMALIGN_CI``) a
missing one fails the test, elsewhere it skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

WHEELS = {"vbench": "vbench==0.1.5", "pyiqa": "pyiqa==0.1.16"}


def reference_source(var: str, package: str) -> Path:
    """The folder in ``$var`` that holds ``package/`` (the unpacked wheel)."""
    src = os.environ.get(var)
    if src and (Path(src) / package).is_dir():
        return Path(src)
    msg = (f"set {var} to {package}'s unpacked wheel (pip download --no-deps {WHEELS[package]}, then "
           "python -m zipfile -e the .whl into a folder; .ci/run does this)")
    if os.environ.get("MMALIGN_CI"):
        pytest.fail(msg)
    pytest.skip(msg)
