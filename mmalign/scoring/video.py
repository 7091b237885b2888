"""Video scoring with an image scorer: score frames, aggregate per video (mean or min).

Frames ``::stride`` of each video are scored against the video's prompt in one flat batch
(item-major; videos of different sizes or lengths as a list of their frames), then reduced: ``mean`` (average frame quality/alignment) or ``min`` (the worst frame,
for "no bad frame" constraints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mmalign.errors import InputError
from mmalign.media import ImageBatch, MediaList, VideoBatch, concat

if TYPE_CHECKING:
    from mmalign.scoring.base import Scorer

REDUCTIONS = ("mean", "min")


def aggregate(frame_scores: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """``[B, T]`` per-frame scores → ``[B]``."""
    if reduce == "mean":
        return frame_scores.mean(dim=1)
    if reduce == "min":
        return frame_scores.min(dim=1).values
    raise InputError(f"unknown frame reduction {reduce!r}; use one of {REDUCTIONS}")


def score_video_frames(scorer: "Scorer", video: VideoBatch | MediaList, prompts: list[str], *, reduce: str = "mean",
                       stride: int = 1, **score_kw) -> torch.Tensor:
    """Score videos with an image scorer by frame aggregation → ``Tensor[B]``; a MediaList of videos of
    different sizes or frame counts is scored as one flat list of frames, then reduced per video."""
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown frame reduction {reduce!r}; use one of {REDUCTIONS}")
    if stride < 1:
        raise InputError(f"frame stride must be ≥ 1, got {stride}")
    if isinstance(video, MediaList):
        frames = [v.frames(stride) for v in video.items]
        counts = [len(f) for f in frames]
        per_frame = scorer.score(concat(frames), [p for p, n in zip(prompts, counts) for _ in range(n)], **score_kw)
        return torch.cat([aggregate(s[None], reduce) for s in per_frame.split(counts)])
    px = video.pixels[:, ::stride]
    b, t = px.shape[:2]
    frames = ImageBatch(px.reshape(b * t, *px.shape[2:]))
    per_frame = scorer.score(frames, [p for p in prompts for _ in range(t)], **score_kw)
    return aggregate(per_frame.view(b, t), reduce)
