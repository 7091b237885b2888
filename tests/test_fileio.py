"""Atomic writes (mmalign.fileio): a failed write keeps the old file and leaves no temporary behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmalign.fileio import atomic_write, atomic_write_json, atomic_write_jsonl, atomic_write_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")

    def crash(tmp: Path) -> None:
        tmp.write_text("half of the new conte")
        raise KeyboardInterrupt  # a killed run

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would create it, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_temp_keeps_suffix_and_parents_are_created(tmp_path):
    seen = []
    out = atomic_write(tmp_path / "a" / "b" / "x.npy", lambda tmp: (seen.append(tmp.suffix), np.save(tmp, np.arange(3))))
    assert seen == [".npy"]  # numpy.save would append .npy to any other suffix
    assert np.load(out).tolist() == [0, 1, 2]


def test_json_and_jsonl(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"t": torch.tensor([1.5, 2.0]), "p": tmp_path, "n": np.float32(0.5)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"t": [1.5, 2.0], "p": str(tmp_path), "n": 0.5}
    atomic_write_jsonl(tmp_path / "m.jsonl", [{"a": 1}, {"a": 2}])
    assert [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [{"a": 1}, {"a": 2}]
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".*tmp*"))


def test_files_get_a_normal_mode_and_the_umask_is_never_touched(tmp_path, monkeypatch):
    import importlib
    import os

    import mmalign.fileio as fileio

    def no_umask(mask):
        raise AssertionError("mmalign changed the process umask")

    current = os.umask(0o027)  # the test's own umask; restored below
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        importlib.reload(fileio)  # importing it must not read or set the umask either
        path = fileio.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        monkeypatch.undo()
        os.umask(current)
    assert (path.stat().st_mode & 0o777) == 0o640  # 0666 less the umask 027, like open() would give
