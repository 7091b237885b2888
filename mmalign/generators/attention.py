"""Attention backends for diffusers denoisers.

* ``sdpa`` (default): PyTorch ``scaled_dot_product_attention`` (diffusers ``AttnProcessor2_0``), which
  picks the fused flash / memory-efficient kernels on CUDA by capability;
* ``math``: the classic ``AttnProcessor`` (explicit softmax(QKᵀ)V) on UNets; on models whose processors
  call SDPA directly (SD3, Wan, Stable Audio DiTs) SDPA restricted to its math kernel;
* ``flash``: SDPA restricted to the fused flash kernel — needs CUDA and fp16/bf16;
* ``xformers``: xformers' memory-efficient attention — needs the ``xformers`` package and CUDA.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmalign.errors import ConfigError

BACKENDS = ("sdpa", "math", "xformers", "flash")


def _classic(module: torch.nn.Module) -> bool:
    """True when every attention processor is one of the classic UNet processors (swappable)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

    procs = getattr(module, "attn_processors", None)
    return bool(procs) and all(isinstance(p, (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor)) for p in procs.values())


def _restrict_kernel(module: torch.nn.Module, backends: list[SDPBackend] | None) -> None:
    """Run ``module.forward`` inside ``sdpa_kernel(backends)`` (None: undo)."""
    orig = module.__dict__.pop("_mmalign_orig_forward", None)
    if orig is not None:
        module.forward = orig
    if backends is None:
        return
    orig = module.forward

    @functools.wraps(orig)
    def forward(*args, **kwargs):
        with sdpa_kernel(backends):
            return orig(*args, **kwargs)

    module._mmalign_orig_forward = orig
    module.forward = forward


def set_attention_backend(module: torch.nn.Module, backend: str = "sdpa") -> torch.nn.Module:
    """Switch ``module``'s attention to ``backend`` (one of :data:`BACKENDS`); returns ``module``."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

    if backend not in BACKENDS:
        raise ConfigError(f"attention backend {backend!r} is not one of {list(BACKENDS)}")
    classic = _classic(module)
    if backend in ("xformers", "flash") and not torch.cuda.is_available():
        raise ConfigError(f"attention backend {backend!r} needs a CUDA device, and none is available; "
                          "use 'sdpa' (default) or 'math'")
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ConfigError("attention backend 'xformers' needs the xformers package (pip install xformers); "
                          "or use 'sdpa', which has fused kernels built in")
    _restrict_kernel(module, None)
    if backend == "sdpa":
        if classic:
            module.set_attn_processor(AttnProcessor2_0())
    elif backend == "math":
        if classic:
            module.set_attn_processor(AttnProcessor())
        else:
            _restrict_kernel(module, [SDPBackend.MATH])
    elif backend == "flash":
        if classic:
            module.set_attn_processor(AttnProcessor2_0())
        _restrict_kernel(module, [SDPBackend.FLASH_ATTENTION])
    else:  # xformers
        if classic:
            module.set_attn_processor(XFormersAttnProcessor())
        elif hasattr(module, "set_attention_backend"):
            module.set_attention_backend("xformers")
        else:
            raise ConfigError(f"{type(module).__name__} cannot use xformers; use 'sdpa'")
    return module


def transformers_attention(backend: str) -> str:
    """The ``attn_implementation`` of a transformers model for ``backend`` (MusicGen)."""
    if backend not in BACKENDS:
        raise ConfigError(f"attention backend {backend!r} is not one of {list(BACKENDS)}")
    if backend == "xformers":
        raise ConfigError("transformers models (MusicGen) do not support xformers; use 'sdpa', 'math' or 'flash'")
    if backend == "flash":
        if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
            raise ConfigError("attention 'flash' for transformers models needs CUDA and the flash-attn package")
        return "flash_attention_2"
    return {"sdpa": "sdpa", "math": "eager"}[backend]
