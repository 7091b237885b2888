"""Random draws a run owns: seeded generators, and a forked global RNG where a library draws from it.

Trainers draw noise, timesteps and data order from their own ``torch.Generator`` objects. Where a
library initialises weights from the global RNG (peft's LoRA init, a VAE that samples its
posterior), :func:`owned_rng` forks the global state, seeds it, and restores it afterwards, so the
draws depend only on the seed given, never on what ran before, and the caller's RNG is untouched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def owned_rng(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with the global torch RNG (CPU, and ``device`` if it is CUDA) seeded by ``seed``, then restore it."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


__all__ = ["owned_rng"]
