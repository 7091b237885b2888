"""Shared test setup: offline, one thread, deterministic, and a scratch folder per test."""

from __future__ import annotations

import os

# before any test imports transformers / huggingface_hub: never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tmp_dir(tmp_path, monkeypatch):
    """A fresh empty folder that is also the working directory of the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
