"""Pure VBench formulas (Huang et al., "VBench", CVPR 2024; code at Vchitect/VBench ``45e79ec``).

Every function here is a small, side-effect-free piece of math that the dimensions compose and the
parity tests check. Comments name the upstream file (``vbench/`` of Vchitect/VBench@45e79ec).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# frame sampling (vbench/utils.py::get_frame_indices, dynamic_degree.py subsampling)


def frame_indices(num_frames: int, vlen: int) -> list[int]:
    """VBench ``utils.py::get_frame_indices(num_frames, vlen, sample='middle')``.

    boundaries = int(linspace(0, vlen, min(num_frames, vlen) + 1)); index_k = ⌊(b_k + b_{k+1} − 1)/2⌋;
    padded with the last index up to ``num_frames``.
    """
    if vlen <= 0:
        return []
    n = min(num_frames, vlen)
    # numpy.linspace semantics (start + k*step, last point exact), truncated to int
    step = vlen / n
    bounds = [int(k * step) if k < n else vlen for k in range(n + 1)]
    idx = [(bounds[k] + bounds[k + 1] - 1) // 2 for k in range(n)]
    return idx + [idx[-1]] * (num_frames - len(idx))


def fps_interval(fps: float, target: float = 8.0) -> int:
    """dynamic_degree subsampling interval ``max(1, round(fps/8))``, banker's rounding (``dynamic_degree.py``)."""
    return max(1, round(fps / target))


# ---------------------------------------------------------------------------------------------
# consistency (subject_consistency.py, background_consistency.py)


def consistency_sum(features: torch.Tensor) -> tuple[float, int]:
    """Σ_{t≥1} s_t and the pair count F−1 for one video.

    s_t = (max(0, cos(f_{t−1}, f_t)) + max(0, cos(f_0, f_t))) / 2. ``features`` ``[F, D]`` (any norm).
    """
    f = F.normalize(features.double(), dim=-1)  # [F, D]
    if f.shape[0] < 2:
        return 0.0, 0
    prev = (f[1:] * f[:-1]).sum(-1).clamp_min(0)  # [F-1]
    first = (f[1:] * f[:1]).sum(-1).clamp_min(0)  # [F-1]
    return float(((prev + first) / 2).sum()), int(f.shape[0] - 1)


# ---------------------------------------------------------------------------------------------
# pixels (temporal_flickering.py, motion_smoothness.py)


def temporal_flickering(frames: torch.Tensor) -> float:
    """(255 − mean_t MAE(frame_t, frame_{t+1})) / 255 on uint8 frames ``[F, 3, H, W]``.

    VBench reads BGR with OpenCV; the mean absolute difference over all channels does not depend on
    channel order, so RGB gives the same number.
    """
    from mmalign.scoring.video import frame_change  # the same MAE, differentiable, as the still-shot reward

    return float(1.0 - frame_change(frames.double()[None] / 255.0)[0])  # float64, as numpy's mean of cv2.absdiff


def motion_smoothness(originals: torch.Tensor, predictions: torch.Tensor) -> float:
    """(255 − vfi)/255 with vfi = mean_i mean |orig_i − pred_i| on uint8 frames."""
    n = min(originals.shape[0], predictions.shape[0])
    if n == 0:
        return float("nan")
    diff = (originals[:n].to(torch.int16) - predictions[:n].to(torch.int16)).abs().to(torch.float64)
    return float((255.0 - diff.flatten(1).mean(1).mean()) / 255.0)


def to_uint8_truncate(x: torch.Tensor) -> torch.Tensor:
    """AMT output conversion ``clip(x·255, 0, 255).astype(uint8)``: truncates, does not round (``motion_smoothness.py``)."""
    return (x * 255.0).clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# optical-flow decisions (static_filter.py, dynamic_degree.py)


def top_fraction_mean(magnitude: torch.Tensor, fraction: float) -> float:
    """Mean of the top ``fraction`` of a flow-magnitude map ``[H, W]`` with cut = int(h·w·fraction)."""
    flat = magnitude.flatten()
    cut = int(flat.numel() * fraction)
    if cut == 0:
        return float(flat.max()) if flat.numel() else 0.0
    return float(torch.topk(flat, cut).values.mean())


def dynamic_threshold(height: int, width: int) -> float:
    """thres = 6·min(H, W)/256."""
    return 6.0 * min(height, width) / 256.0


def is_dynamic(pair_scores: Sequence[float], height: int, width: int, count: int) -> bool:
    """Dynamic iff at least round(4·count/16) pair scores exceed 6·min(H,W)/256."""
    thres = dynamic_threshold(height, width)
    need = round(4 * count / 16)
    return sum(s > thres for s in pair_scores) >= need


@dataclass(frozen=True)
class StaticDecision:
    static: bool
    threshold: float
    count_num: int
    n_moving: int


def is_static(consecutive: Sequence[float], wrap: Sequence[float], height: int, width: int, frames: int) -> StaticDecision:
    """Static filter (``static_filter.py``): #(consecutive > thres) ≤ count_num and both wraps ≤ thres·count_num·2.

    thres = 3·min(H, W)/256, count_num = round(2·F/16) (banker's rounding).
    """
    thres = 3.0 * min(height, width) / 256.0
    count_num = round(2 * frames / 16)
    moving = sum(s > thres for s in consecutive)
    ok = moving <= count_num and all(w <= thres * count_num * 2 for w in wrap)
    return StaticDecision(bool(ok), thres, count_num, int(moving))


# ---------------------------------------------------------------------------------------------
# detector dimensions (object_class.py … scene.py)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


HORIZONTAL = ("on the left of", "on the right of")
VERTICAL = ("on the top of", "on the bottom of")


def spatial_pair_score(a: Sequence[float], b: Sequence[float], relationship: str) -> float:
    """VBench ``spatial_relationship.py`` pair score. The sign of the direction is *not* checked.

    Horizontal relations: 1 if |dx| > |dy| and IoU < 0.1, 0.1/IoU if |dx| > |dy| and IoU ≥ 0.1, else 0;
    vertical relations the same with |dy| > |dx|.
    """
    dx = (a[0] + a[2]) / 2 - (b[0] + b[2]) / 2
    dy = (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    iou = box_iou(a, b)
    if relationship in HORIZONTAL:
        along = abs(dx) > abs(dy)
    elif relationship in VERTICAL:
        along = abs(dy) > abs(dx)
    else:
        return 0.0
    if not along:
        return 0.0
    return 1.0 if iou < 0.1 else 0.1 / iou


COLOR_WORDS = ("white", "red", "pink", "blue", "silver", "purple", "orange", "green", "gray", "yellow", "black", "grey")


def color_object_key(prompt: str, color: str) -> str:
    """VBench color object key: the prompt with 'a ', 'an ' and the colour word removed, stripped."""
    return prompt.replace("a ", "").replace("an ", "").replace(color, "").strip()


def scene_frame_success(caption: str, scene: str) -> bool:
    """A scene frame succeeds iff every whitespace token of the label is a substring of the caption."""
    return all(tok in caption for tok in scene.split())
