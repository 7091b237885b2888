"""Device and dtype defaults shared by generators, scorers and trainers, and freeing accelerator memory.

Precision is a setting: ``fp32``, ``bf16``, ``fp16`` or ``auto``. ``auto`` picks bf16 where the
hardware computes it natively and the model is large enough to gain from it, fp32 elsewhere:

* a CUDA device that supports bf16 (``torch.cuda.is_bf16_supported()``): bf16;
* a CPU with AMX-BF16 or AVX512-BF16 (the ``amx_bf16`` / ``avx512_bf16`` flags of ``/proc/cpuinfo``,
  and PyTorch's own kernels at AVX512 level, ``torch.backends.cpu.get_cpu_capability()``): bf16 for a
  model of at least :data:`AUTO_BF16_MIN_PARAMS` parameters. Smaller models are bound by per-op
  overhead, not by matmuls, and can run slower in bf16 (the shipped synth-sdxl UNet, 2.3M parameters:
  forward + backward at 0.76× of fp32; ``benchmarks/bench_precision.py`` measures it), so they keep fp32;
* anything else: fp32.

The choice and its reason are logged (logger ``mmalign.devices``) and named by :func:`dtype_name`
in result files.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Iterable

import torch

from mmalign.errors import ConfigError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
#: the values a ``--dtype`` option accepts, and its help text
DTYPE_CHOICES = ("fp32", "bf16", "fp16", "auto")
#: ``auto`` on a CPU keeps fp32 below this many parameters (the compute model's: a denoiser, a scorer's
#: dual encoder): ``benchmarks/bench_precision.py`` measures the 2.3M-parameter synth-sdxl UNet's LoRA
#: DPO step slower in bf16 (0.9×; the issue's measurement 0.76×), the 166M mid-size SDXL-class UNet and
#: the 150M ViT-B-16 scorer 1.4–2.8× faster (on AVX512-BF16 without AMX; more with AMX)
AUTO_BF16_MIN_PARAMS = 10_000_000
DTYPE_HELP = (f"compute precision: fp32 | bf16 | fp16 | auto (bf16 on a CPU with AMX/AVX512-BF16 for models of "
              f"≥ {AUTO_BF16_MIN_PARAMS // 10**6}M parameters and on CUDA devices that support it, else fp32; "
              "the choice is logged and recorded)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available, else ``cpu``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_bf16_feature() -> str | None:
    """``"amx_bf16"`` or ``"avx512_bf16"`` when this CPU computes bf16 natively and PyTorch runs AVX512
    kernels on it, else None (``/proc/cpuinfo`` flags; no flags file, e.g. macOS: None)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def auto_dtype(device: torch.device, params: int | None = None) -> tuple[torch.dtype, str]:
    """What ``auto`` means on ``device`` for a model of ``params`` parameters (None: size unknown, taken
    as large), and why (a sentence for the log)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "the CUDA device supports bf16"
        return torch.float32, "the CUDA device does not support bf16"
    if device.type != "cpu":
        return torch.float32, f"bf16 is only chosen on CPUs and CUDA devices, not {device.type}"
    feature = cpu_bf16_feature()
    if feature is None:
        return torch.float32, "this CPU has neither AMX-BF16 nor AVX512-BF16"
    if params is not None and params < AUTO_BF16_MIN_PARAMS:
        return torch.float32, (f"the model has {params / 1e6:.1f}M parameters, below {AUTO_BF16_MIN_PARAMS / 1e6:.0f}M: "
                               f"bound by per-op overhead rather than matmuls, fp32 kept (CPU has {feature})")
    size = "size unknown" if params is None else f"{params / 1e6:.1f}M parameters"
    return torch.bfloat16, f"the CPU has {feature} ({size})"


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, params: int | None = None,
                  what: str = "model") -> torch.dtype:
    """The compute dtype. ``None`` → fp32 on CPU; bf16 on CUDA where supported, else fp16.
    ``"auto"`` → :func:`auto_dtype` for a model of ``params`` parameters (logged, naming ``what``).
    Names: fp32/fp16/bf16 (or long forms)."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        chosen, why = auto_dtype(device, params)
        log.info("dtype auto → %s for %s on %s: %s", dtype_name(chosen), what, device, why)
        return chosen
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(_DTYPES) + ['auto']}")
    return _DTYPES[dtype]


def check_dtype_option(value: str) -> str:
    """A ``--dtype`` value, checked (ConfigError naming the valid ones)."""
    if value not in DTYPE_CHOICES:
        raise ConfigError(f"--dtype {value!r}: use one of {' | '.join(DTYPE_CHOICES)}")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """``"fp32"`` / ``"bf16"`` / ``"fp16"`` (the name result files carry), else torch's name."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).removeprefix("torch."))


def num_parameters(modules: Iterable[torch.nn.Module]) -> int:
    """Parameters of ``modules`` (each counted once)."""
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())


def cast_weights(module: torch.nn.Module, dtype: torch.dtype, scalars: bool = False) -> torch.nn.Module:
    """Cast ``module``'s floating-point parameters and buffers to ``dtype`` once, in place, so it computes
    in ``dtype`` without autocast (which on CPU casts every weight at every op: 2× *slower* than fp32 for
    a ViT-B-16). Scalar (0-dim) parameters — logit scales — stay fp32 unless ``scalars``: they cost
    nothing, and in bf16 exp(ln 100) would read 98.9."""
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None and p.is_floating_point() and (p.ndim > 0 or scalars) and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in m._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                m._buffers[name] = b.to(dtype)
    return module


def empty_cache(device: torch.device) -> None:
    """Return the cached, unused memory of ``device``'s allocator to the accelerator (nothing on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def process_state(device: str | torch.device = "auto"):
    """accelerate's ``PartialState`` of this process: under ``accelerate launch`` / torchrun its rank, share
    (``split_between_processes``) and device; alone, a one-process state. CPU processes join a gloo group
    (``device`` ``cpu``, or no CUDA device), GPU processes the CUDA backend."""
    from accelerate import PartialState

    return PartialState(cpu=str(device) == "cpu" or not torch.cuda.is_available())

