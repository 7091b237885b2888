"""Video scoring with an image scorer: score frames, aggregate per video (mean or min).

Frames ``::stride`` of each video are scored in one flat batch (item-major; videos of different sizes or
lengths as a list of their frames), then reduced: ``mean`` (average frame quality/alignment) or ``min``
(the worst frame, for "no bad frame" constraints).

Each frame is scored against the video's prompt, or, with ``captions`` (a name in :data:`FRAME_CAPTIONS`),
against its own *keyframe caption*: a planner turns the video prompt into one caption per frame, or None
for a frame it says nothing about, which is then left out. "a red square turning blue" asks for a red
square at the start and a blue one at the end, which an image scorer can check frame by frame but not
against the whole prompt. Planners come from the prompt's world (an LLM prompt planner for real prompts, as
in VideoDirectorGPT, Lin et al. 2023; the synthetic world's grammar registers ``synth-keyframes``); scoring
key frames with an image reward model is InstructVideo's segmental video reward (Yuan et al. 2024, §3.2).

No image scorer sees whether anything moves. With ``still_weight`` w > 0, a video whose prompt the
planner of the same name in :data:`STILL_SHOTS` calls a still shot ("a static red circle") also loses
``w · mean_t MAE(frame_t, frame_{t+1})`` (pixels in [0, 1]): VBench's temporal flickering,
``1 − MAE``, which VBench scores on static videos only (Huang et al. 2024, VBench;
``vbench/temporal_flickering.py``), as a differentiable penalty that is 0 for a perfectly still video.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch

from mmalign.errors import InputError
from mmalign.media import MediaList, VideoBatch, concat
from mmalign.registry import Registry

if TYPE_CHECKING:
    from mmalign.scoring.base import Scorer

REDUCTIONS = ("mean", "min")

#: ``planner(prompt, num_frames) -> [caption or None per frame]``: keyframe captions of a video prompt
FrameCaptions = Callable[[str, int], Sequence[Optional[str]]]
FRAME_CAPTIONS: Registry[FrameCaptions] = Registry("frame-caption planner")
#: ``still(prompt) -> bool``: does the prompt ask for a still shot, in which nothing moves?
STILL_SHOTS: Registry[Callable[[str], bool]] = Registry("still-shot planner")


def aggregate(frame_scores: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """``[B, T]`` per-frame scores → ``[B]``."""
    if reduce == "mean":
        return frame_scores.mean(dim=1)
    if reduce == "min":
        return frame_scores.min(dim=1).values
    raise InputError(f"unknown frame reduction {reduce!r}; use one of {REDUCTIONS}")


def frame_prompts(prompts: Sequence[str], counts: Sequence[int], stride: int, captions: str | None) -> list[list[str | None]]:
    """The prompt of each scored frame (frames ``::stride`` of video ``i``, which has ``counts[i]`` frames):
    the video's prompt, or the planner ``captions``' caption of that frame (None: not scored)."""
    if captions is None:
        return [[p] * len(range(0, n, stride)) for p, n in zip(prompts, counts)]
    plan = FRAME_CAPTIONS.get(captions)
    out = []
    for p, n in zip(prompts, counts):
        caps = list(plan(p, n))
        if len(caps) != n:
            raise InputError(f"frame-caption planner {captions!r} gave {len(caps)} captions for a {n}-frame video; it must give one per frame")
        if not any(c is not None for c in caps[::stride]):
            raise InputError(f"frame-caption planner {captions!r} names no frame ::{stride} of the {n}-frame video for {p!r}; "
                             "score it without captions or with a smaller stride")
        out.append(caps[::stride])
    return out


def frame_change(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, T, 3, H, W]`` pixels in [0, 1] → ``[B]`` mean_t MAE(frame_t, frame_{t+1}), differentiable
    (VBench's temporal flickering is ``1 − this`` on 0–255 frames / 255); 0 for one frame."""
    if pixels.shape[1] < 2:
        return pixels.new_zeros(pixels.shape[0])
    return (pixels[:, 1:] - pixels[:, :-1]).abs().flatten(2).mean(2).mean(1)


def score_video_frames(scorer: "Scorer", video: VideoBatch | MediaList, prompts: list[str], *, reduce: str = "mean",
                       stride: int = 1, captions: str | None = None, still_weight: float = 0.0, **score_kw) -> torch.Tensor:
    """Score videos with an image scorer by frame aggregation → ``Tensor[B]``; a MediaList of videos of
    different sizes or frame counts is scored as one flat list of frames, then reduced per video. With
    ``captions`` each frame is scored against its keyframe caption and uncaptioned frames are left out;
    with ``still_weight`` > 0 the videos whose prompt that planner calls a still shot lose
    ``still_weight ·`` :func:`frame_change`."""
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown frame reduction {reduce!r}; use one of {REDUCTIONS}")
    if stride < 1:
        raise InputError(f"frame stride must be ≥ 1, got {stride}")
    items = video.items if isinstance(video, MediaList) else [video]
    frames = concat([v.frames(stride) for v in items])  # item-major: every video's frames ::stride
    per_video = frame_prompts(prompts, [v.pixels.shape[1] for v in items for _ in range(len(v))], stride, captions)
    flat = [c for caps in per_video for c in caps]
    keep = [i for i, c in enumerate(flat) if c is not None]
    per_frame = scorer.score(frames if len(keep) == len(flat) else frames[keep], [flat[i] for i in keep], **score_kw)
    counts = [sum(c is not None for c in caps) for caps in per_video]
    scores = torch.cat([aggregate(s[None], reduce) for s in per_frame.split(counts)])
    if still_weight > 0:
        if captions is None:
            raise InputError("a still-shot penalty (still_weight > 0) needs a planner: set the card's video.captions")
        still = STILL_SHOTS.get(captions)
        change = torch.cat([frame_change(v.pixels) for v in items]).to(scores)
        mask = torch.tensor([float(still(p)) for p in prompts], device=scores.device, dtype=scores.dtype)
        scores = scores - still_weight * mask * change
    return scores
