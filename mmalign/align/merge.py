"""Merging LoRA experts into one LoRA, on the weight updates ΔW_k = (α_k / r_k)·B_k·A_k.

Every method works per layer on the experts' ΔW (so experts of different ranks merge) with weights w_k:

* ``linear``: the exact task-arithmetic sum ΔW' = Σ_k w_k·ΔW_k, stored at the summed rank r' = Σ_k r_k
  by concatenation, A' = concat_k(w_k·s_k·A_k) (rows), B' = concat_k(B_k) (columns), α' = r' (scale 1),
  so B'·A' = Σ_k w_k·s_k·B_k·A_k exactly. This is what diffusers computes at inference with
  ``pipe.set_adapters([...], adapter_weights=w)`` (peft ``tuners/lora/layer.py`` ``Linear.forward``:
  base(x) + Σ_k B_k·A_k·x·w_k·s_k) and peft's ``combination_type="cat"``. It is **not** peft's
  ``add_weighted_adapter(..., combination_type="linear")``, which averages the A's and the B's
  separately (A' = Σ √(w_k·s_k)·A_k, B' = Σ √(w_k·s_k)·B_k) and so adds cross terms B_k·A_l
  (peft ``src/peft/tuners/lora/model.py`` @ 5d602fdb, ``_generalized_task_arithmetic_weighted_adapter``).
* ``svd``: the ``linear`` sum, truncated to rank R by SVD (Eckart–Young: the best rank-R
  approximation in Frobenius norm); at R ≥ r' it equals ``linear``.
* ``ties``: TIES-Merging (Yadav et al. 2023, "Resolving Interference When Merging Models",
  arXiv 2306.01708, Algorithm 1): trim each ΔW_k to its top-``density`` fraction of entries by
  magnitude, elect each entry's sign γ = sgn(Σ_k trimmed ΔW_k), and take the disjoint mean over the
  experts that agree with it, weighted: ΔW' = Σ_{k∈A} w_k·ΔŴ_k / |A|, A = {k : sgn ΔŴ_k = γ ≠ 0}.
  The paper has one scale λ on the merged vector; equal weights w_k = λ give exactly its
  θ_init + λ·τ_m, and per-expert weights enter after the sign election, as in peft's ``ties``
  (``src/peft/utils/merge_utils.py`` @ 5d602fdb). Where Σ_k ΔŴ_k is exactly 0 the paper's
  sgn is 0 and the entry stays 0 (peft breaks that tie towards +).
* ``dare_linear``: DARE (Yu et al. 2024, "Language Models are Super Mario", arXiv 2311.03099, Eq. 2):
  keep each entry of each ΔW_k with probability ``density`` (m ~ Bernoulli(density)), rescale the
  survivors by 1/density (so E[ΔW̃_k] = ΔW_k), then Σ_k w_k·ΔW̃_k.
* ``dare_ties``: the DARE drop-and-rescale in place of TIES's magnitude trim, then TIES's sign
  election and disjoint mean (peft's ``dare_ties``, same file).

``ties``, ``dare_linear`` and ``dare_ties`` produce a dense ΔW', which is factored back to rank R by
truncated SVD. Factors split the singular values evenly, B' = U_R·diag(√S_R), A' = diag(√S_R)·Vh_R,
α' = R: balanced factors (‖B'‖₂ = ‖A'‖₂) keep both in the same range when the merged LoRA is stored in
half precision or trained further (peft puts all of S into B'; the product is the same). A layer whose
ΔW has fewer than R singular values (min(out, in) < R) is padded with zero components, so every layer
has rank R. DARE's masks come from one CPU ``torch.Generator`` seeded with ``seed``, drawn layer by layer
in sorted order and expert by expert, so a seed gives the same LoRA on any device.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence, Union

import torch
from tqdm.auto import tqdm

from mmalign.devices import resolve_device
from mmalign.errors import ConfigError
from mmalign.generators.lora import LORA_FOLDER_FILES, LoraLayer, LoraState, read_lora, write_lora

Tensor = torch.Tensor
LoraSource = Union[str, os.PathLike, tuple[Union[str, os.PathLike], float]]

METHODS: tuple[str, ...] = ("linear", "svd", "ties", "dare_linear", "dare_ties")
#: methods that end in a truncated SVD and so need a target rank
RANKED: tuple[str, ...] = ("svd", "ties", "dare_linear", "dare_ties")

log = logging.getLogger(__name__)


# --- pure functions: one layer, tensors in, tensors out ------------------------------------------


def weighted_sum(layers: Sequence[LoraLayer], weights: Sequence[float]) -> LoraLayer:
    """Σ_k w_k·ΔW_k exactly, at rank Σ_k r_k: A' = concat_k(w_k·s_k·A_k) [Σr, in], B' = concat_k(B_k) [out, Σr], α' = Σr."""
    A = torch.cat([w * layer.scale * layer.A for layer, w in zip(layers, weights)], dim=0)  # [Σr, in]
    B = torch.cat([layer.B for layer in layers], dim=1)  # [out, Σr]
    return LoraLayer(A=A, B=B, alpha=float(A.shape[0]))


def _from_svd(U: Tensor, S: Tensor, Vh: Tensor, rank: int) -> LoraLayer:
    """Rank-``rank`` factors B' = U·diag(√S) [out, R], A' = diag(√S)·Vh [R, in] (zero-padded), α' = R."""
    k = min(rank, S.numel())
    root = S[:k].sqrt()  # [k]
    B = U.new_zeros(U.shape[0], rank)
    A = Vh.new_zeros(rank, Vh.shape[1])
    B[:, :k] = U[:, :k] * root
    A[:k] = root[:, None] * Vh[:k]
    return LoraLayer(A=A, B=B, alpha=float(rank))


def factor(delta: Tensor, rank: int) -> LoraLayer:
    """The best rank-``rank`` LoRA of a dense ΔW [out, in] (truncated SVD, factors sharing √S).

    The SVD comes from the eigendecomposition of the Gram matrix of the shorter side, in float64:
    M·Mᵀ = U·S²·Uᵀ and Vh = S⁻¹·Uᵀ·M (M = ΔW, or ΔWᵀ when out > in). The product B'·A' = U_R·U_Rᵀ·M is an
    orthogonal projection, and in fp64 its error (~√ε₆₄·‖ΔW‖₂ ≈ 1e-8·‖ΔW‖₂) is below fp32 round-off,
    while it runs several times faster than ``torch.linalg.svd`` on a CPU. Components with
    S² ≤ 1e-14·S₁² (zero within that error) are zero.
    """
    tall = delta.shape[0] > delta.shape[1]
    M = delta.double().T if tall else delta.double()  # [p, q], p ≤ q
    S2, U = torch.linalg.eigh(M @ M.T)  # ascending
    S2, U = S2.flip(0).clamp(min=0), U.flip(1)  # descending
    S = torch.where(S2 > 1e-14 * S2[0], S2.sqrt(), torch.zeros_like(S2))  # [p]
    Vh = (U.T @ M) / torch.where(S > 0, S, torch.ones_like(S))[:, None]  # [p, q]
    if tall:  # ΔW = Mᵀ = Vhᵀ·S·Uᵀ
        U, Vh = Vh.T, U.T
    result = _from_svd(U, S, Vh, rank)
    return LoraLayer(A=result.A.to(delta.dtype), B=result.B.to(delta.dtype), alpha=result.alpha)


def factor_product(B: Tensor, A: Tensor, rank: int) -> LoraLayer:
    """:func:`factor` of ΔW = B·A [out, r]·[r, in] without forming ΔW: B = Q_B·R_B, Aᵀ = Q_A·R_A,
    SVD of the small core R_B·R_Aᵀ = U·S·Vh, so ΔW = (Q_B·U)·S·(Vh·Q_Aᵀ).

    O((out + in)·r²) instead of a dense SVD, and in float64 (cheap at this size), so at rank ≥ r the
    factors reproduce B·A to fp32 round-off.
    """
    Qb, Rb = torch.linalg.qr(B.double())  # [out, m], [m, r]
    Qa, Ra = torch.linalg.qr(A.T.double())  # [in, n], [n, r]
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)  # core [m, n]
    result = _from_svd(Qb @ U, S, Vh @ Qa.T, rank)
    return LoraLayer(A=result.A.to(A.dtype), B=result.B.to(B.dtype), alpha=result.alpha)


def trim(delta: Tensor, density: float) -> Tensor:
    """TIES step 1: keep the k = round(density·numel) (at least 1) entries of largest |ΔW|, zero the rest."""
    k = max(1, round(density * delta.numel()))
    flat = delta.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep.view_as(delta), delta, torch.zeros_like(delta))


def dare(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE (Yu et al. 2024, Eq. 2): keep each entry with probability ``density`` and divide the kept ones by it.

    The mask is drawn on the CPU from ``generator`` (keep where U(0, 1) < density), so it does not
    depend on the device of ``delta``.
    """
    keep = torch.rand(delta.shape, generator=generator) < density  # [out, in] ~ Bernoulli(density)
    return torch.where(keep.to(delta.device), delta / density, torch.zeros_like(delta))


def disjoint_merge(trimmed: Tensor, weights: Tensor) -> Tensor:
    """TIES steps 2–3 on ``trimmed`` [K, ...] with weights [K]: elect γ = sgn(Σ_k ΔŴ_k), then
    Σ_{k∈A} w_k·ΔŴ_k / |A| with A = {k : sgn ΔŴ_k = γ ≠ 0} (0 where A is empty)."""
    elected = trimmed.sum(0).sign()  # γ [...]
    agree = (trimmed.sign() == elected) & (trimmed != 0)  # [K, ...]
    w = weights.to(trimmed).view(-1, *[1] * (trimmed.dim() - 1))  # [K, 1, ...]
    total = torch.where(agree, w * trimmed, torch.zeros_like(trimmed)).sum(0)
    return total / agree.sum(0).clamp(min=1)


def merge_deltas(deltas: Tensor, weights: Tensor, method: str, density: float, generator: torch.Generator) -> Tensor:
    """``ties``, ``dare_linear`` or ``dare_ties`` of the stacked ΔW_k [K, out, in] → ΔW' [out, in]."""
    if method == "ties":
        return disjoint_merge(torch.stack([trim(d, density) for d in deltas]), weights)
    dropped = torch.stack([dare(d, density, generator) for d in deltas])  # [K, out, in]
    if method == "dare_linear":
        return (weights.to(dropped).view(-1, 1, 1) * dropped).sum(0)
    if method == "dare_ties":
        return disjoint_merge(dropped, weights)
    raise ConfigError(f"merge method {method!r} has no dense ΔW step; it is one of {list(METHODS)}")


def merge_layer(layers: Sequence[LoraLayer], weights: Sequence[float], method: str, density: float = 0.5,
                rank: int | None = None, generator: torch.Generator | None = None) -> LoraLayer:
    """One layer's merged LoRA (see the module docstring); ``rank`` is required except for ``linear``.

    ``generator`` draws DARE's masks (default: a new one seeded with 0).
    """
    if method == "linear":
        return weighted_sum(layers, weights)
    if rank is None:
        raise ConfigError(f"merge method {method!r} needs a rank")
    if method == "svd":
        exact = weighted_sum(layers, weights)
        return factor_product(exact.B, exact.A, rank)
    deltas = torch.stack([layer.delta() for layer in layers])  # [K, out, in]
    w = torch.tensor([float(x) for x in weights])
    return factor(merge_deltas(deltas, w, method, density, generator or torch.Generator().manual_seed(0)), rank)


# --- checks at the boundary ----------------------------------------------------------------------


def check_options(method: str, n: int, weights: Sequence[float], density: float, rank: int | None) -> None:
    """Method, weights, density and rank, before any file is read."""
    if method not in METHODS:
        raise ConfigError(f"merge method {method!r} is not one of {' | '.join(METHODS)}")
    if n < 1:
        raise ConfigError("no LoRAs to merge: pass one or more LoRA folders or .safetensors files")
    if len(weights) != n:
        raise ConfigError(f"{len(weights)} weights for {n} LoRAs: give one weight per LoRA, in the same order")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"weight {i + 1} ({w!r}) is not a finite number: give one number per LoRA, e.g. 0.7")
    if not 0 < density <= 1:
        raise ConfigError(f"density {density} is outside (0, 1]: it is the fraction of ΔW entries kept, e.g. 0.5")
    if method == "linear" and rank is not None:
        raise ConfigError(f"rank {rank} given with method linear, which is exact at the summed rank; "
                          "use method svd to truncate to a rank")
    if method in RANKED and rank is None:
        raise ConfigError(f"merge method {method} needs a rank (--rank R): it factors the merged ΔW back by truncated SVD")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank {rank!r} must be a whole number of at least 1")


def parse_weights(text: str) -> list[float]:
    """``"0.7,0.5"`` → ``[0.7, 0.5]``; a part that is not a number is a ConfigError naming it (:func:`check_options` checks the rest)."""
    weights = []
    for i, part in enumerate(text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--weights {text!r}: weight {i + 1} ({part.strip()!r}) is not a number; "
                              "give comma-separated numbers, one per LoRA, e.g. --weights 0.7,0.5") from None
        weights.append(value)
    return weights


def check_compatible(states: Sequence[LoraState], names: Sequence[str]) -> None:
    """All experts target the same layers with the same ΔW shapes (ranks may differ); else a ConfigError naming both files."""
    for state, name in zip(states, names):
        conv = [key for key, layer in state.layers.items() if layer.is_conv]
        if conv:
            raise ConfigError(f"{name}: {len(conv)} conv LoRA layers (kohya LoCon, e.g. {conv[0]}); merging is defined "
                              "on linear layers' ΔW only, merge LoRAs without conv layers")
    first, name0 = states[0], names[0]
    for state, name in zip(states[1:], names[1:]):
        if first.family and state.family and first.family != state.family:
            raise ConfigError(f"{name} is a LoRA for {state.family} and {name0} one for {first.family}: "
                              "merge LoRAs of the same base model")
        if state.prefix != first.prefix:
            raise ConfigError(f"{name} adapts the {state.prefix!r} and {name0} the {first.prefix!r}: "
                              "merge LoRAs of the same base model")
        only0, only1 = sorted(set(first.layers) - set(state.layers)), sorted(set(state.layers) - set(first.layers))
        if only0 or only1:
            what = (f"target modules {first.targets} vs {state.targets}" if first.targets != state.targets else
                    f"{len(only0) + len(only1)} layers in one only, e.g. {(only0 or only1)[0]}")
            raise ConfigError(f"{name0} and {name} adapt different layers ({what}): merge LoRAs trained on the same "
                              "target modules of the same base model")
        for key, layer in first.layers.items():
            other = state.layers[key]
            shape0, shape1 = (layer.B.shape[0], layer.A.shape[1]), (other.B.shape[0], other.A.shape[1])
            if shape0 != shape1:
                raise ConfigError(f"{name0} and {name} disagree on layer {key}: ΔW of shape {list(shape0)} vs "
                                  f"{list(shape1)}, so they are LoRAs of different architectures")


def _check_out(out: Path) -> None:
    """``out`` is new or holds only LoRA files (:func:`write_lora` replaces it as a whole), checked before any work."""
    if not out.exists():
        return
    other = sorted(p.name for p in out.iterdir() if p.name not in LORA_FOLDER_FILES) if out.is_dir() else [out.name]
    if other:
        raise ConfigError(f"--out {out} exists and holds other files ({other[:3]}); write the merged LoRA to a new folder")


# --- the public function -------------------------------------------------------------------------


def merge(loras: Sequence[LoraSource], method: str = "linear", weights: Sequence[float] | None = None,
          density: float = 0.5, rank: int | None = None, seed: int = 0, out: str | os.PathLike = "merged-lora",
          device: str | torch.device = "auto", progress: bool = True) -> Path:
    """Merge LoRA experts into one LoRA folder (diffusers' format, see :func:`mmalign.generators.lora.write_lora`).

    Args:
        loras: LoRA folders, ``.safetensors`` files or hub ids, each optionally ``(source, weight)``.
        method: ``linear | svd | ties | dare_linear | dare_ties`` (module docstring).
        weights: one number per LoRA (default 1.0 each, as ``set_adapters``); not with ``(source, weight)``.
        density: fraction of ΔW entries TIES keeps / DARE keeps in expectation, in (0, 1].
        rank: rank R of the result; required for every method but ``linear`` (rank Σ r_k).
        seed: seeds DARE's drop masks.
        out: output folder (replaced atomically if it is already a LoRA folder).
        device: where ΔW and the SVDs are computed (``"auto"``: CUDA if available).
        progress: show a progress bar over layers.

    Returns the output folder. ``pipe.load_lora_weights(out)`` and ``load_generator(..., lora=out)`` load it.
    """
    sources = [entry[0] if isinstance(entry, tuple) else entry for entry in loras]
    paired = [entry[1] for entry in loras if isinstance(entry, tuple)]
    if paired and weights is not None:
        raise ConfigError("weights given twice: pass (source, weight) pairs or weights=[...], not both")
    if paired and len(paired) != len(sources):
        raise ConfigError("give a weight for every LoRA or for none: some entries are (source, weight) pairs and some are not")
    weights = list(paired or (weights if weights is not None else [1.0] * len(sources)))
    check_options(method, len(sources), weights, density, rank)
    out = Path(out)
    _check_out(out)

    names = [str(s) for s in sources]
    states = [read_lora(s) for s in sources]
    check_compatible(states, names)
    dev = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)

    merged: dict[str, LoraLayer] = {}
    for key in tqdm(sorted(states[0].layers), desc=f"merge ({method})", unit="layer", disable=not progress):
        layers = [_to(state.layers[key], dev) for state in states]
        result = merge_layer(layers, weights, method, density, rank, generator)
        merged[key] = LoraLayer(A=result.A.cpu(), B=result.B.cpu(), alpha=result.alpha)
    state = LoraState(layers=merged, family=states[0].family, prefix=states[0].prefix, source=str(out))
    provenance = {"method": method, "sources": names, "weights": weights, "density": density, "rank": rank, "seed": seed}
    write_lora(out, state, extra={"merge": provenance})
    log.info("merged %d LoRAs (%s) into %s", len(states), method, out)
    return out


def _to(layer: LoraLayer, device: torch.device) -> LoraLayer:
    """``layer`` in fp32 on ``device`` (merging computes and writes fp32, as :func:`write_lora` does)."""
    return LoraLayer(A=layer.A.to(device, torch.float32), B=layer.B.to(device, torch.float32), alpha=layer.alpha)


__all__ = ["METHODS", "merge", "merge_layer", "weighted_sum", "factor", "factor_product", "trim", "dare",
           "disjoint_merge", "merge_deltas", "check_options", "check_compatible", "parse_weights"]
