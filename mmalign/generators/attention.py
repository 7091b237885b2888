"""Attention backends: one vocabulary for sampling (``--attention``) and training (``attention:``).

* ``sdpa`` (default): PyTorch ``scaled_dot_product_attention``, which picks the kernel (flash,
  memory-efficient, cuDNN or math) per call by device, dtype and shape;
* ``math``: no fused kernel, the explicit softmax(QKᵀ)V — diffusers' classic ``AttnProcessor`` on
  UNets, SDPA restricted to its math kernel elsewhere;
* ``flash``: SDPA restricted to its flash kernel (on CUDA it needs fp16/bf16 activations, e.g. under
  autocast; PyTorch also has a CPU flash kernel);
* ``efficient``: SDPA restricted to its memory-efficient kernel — needs CUDA;
* ``cudnn``: SDPA restricted to its cuDNN kernel — needs CUDA (and a cuDNN that has it);
* ``xformers``: xformers' ``memory_efficient_attention`` through diffusers' xformers processors — needs
  CUDA and the ``xformers`` package.

:func:`set_attention_backend` works on every denoiser of the generator families (UNet2DConditionModel,
UNetMotionModel, the SD3 / Wan / Stable Audio DiTs), LoRA-injected or not, and is undone by setting
``"sdpa"`` again. :func:`transformers_attention` maps the names to a transformers model's
``attn_implementation`` (MusicGen).
"""

from __future__ import annotations

import importlib.util
import types
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmalign.errors import ConfigError

BACKENDS = ("sdpa", "math", "flash", "efficient", "cudnn", "xformers")
#: backends that restrict PyTorch SDPA to one kernel
SDPA_KERNELS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
NEEDS_CUDA = ("efficient", "cudnn", "xformers")
_RESTRICTION = "_mmalign_sdpa_kernel"  # (kernel, the forward it wraps) on a restricted module


def check_backend(backend: str) -> None:
    """ConfigError unless ``backend`` is one of :data:`BACKENDS` and this machine can run it."""
    if backend not in BACKENDS:
        raise ConfigError(f"attention backend {backend!r} is not one of {list(BACKENDS)}")
    if backend in NEEDS_CUDA and not torch.cuda.is_available():
        raise ConfigError(f"attention backend {backend!r} needs a CUDA device, and none is available; "
                          "use 'sdpa' (default), 'math' or 'flash'")
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ConfigError("attention backend 'xformers' needs the xformers package (pip install xformers); "
                          "or use 'sdpa' or 'efficient', PyTorch's built-in fused kernels")


def _processor_for(processor: Any, backend: str) -> Any:
    """The processor to install for ``backend`` in place of ``processor`` (None: keep it), or a ConfigError."""
    from diffusers.models.attention_processor import (AttnProcessor, AttnProcessor2_0, JointAttnProcessor2_0,
                                                      XFormersAttnProcessor, XFormersJointAttnProcessor)

    # interchangeable processors: the members, and which one each backend uses (the rest use "sdpa"'s)
    swaps = [((AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor),
              {"sdpa": AttnProcessor2_0, "math": AttnProcessor, "xformers": XFormersAttnProcessor}),
             ((JointAttnProcessor2_0, XFormersJointAttnProcessor),
              {"sdpa": JointAttnProcessor2_0, "xformers": XFormersJointAttnProcessor})]
    for members, by_backend in swaps:
        if type(processor) in members:
            cls = by_backend.get(backend, by_backend["sdpa"])
            return None if type(processor) is cls else cls()
    if backend == "xformers":
        raise ConfigError(f"{type(processor).__name__} has no xformers version in diffusers; use 'efficient' "
                          "(PyTorch's memory-efficient kernel) or 'sdpa'")
    return None


def _set_processors(module: torch.nn.Module, backend: str) -> None:
    """Swap the attention processors of ``module`` for ``backend`` (checks them all before changing any)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    dispatched, swaps = [], []
    for attn in module.modules():
        processor = getattr(attn, "processor", None)
        if processor is None or not hasattr(attn, "set_processor"):
            continue
        if hasattr(processor, "_attention_backend"):  # diffusers' attention dispatcher (Wan)
            dispatched.append(processor)
        else:
            new = _processor_for(processor, backend)
            if new is not None:
                swaps.append((attn, new))
    for attn, new in swaps:
        attn.set_processor(new)
    # per processor: diffusers' ModelMixin.set_attention_backend would also set a process-wide default
    for processor in dispatched:
        processor._attention_backend = AttentionBackendName.XFORMERS if backend == "xformers" else None


def _restricted_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    kernel, inner = self.__dict__[_RESTRICTION]
    with sdpa_kernel([kernel]):
        return inner(*args, **kwargs) if inner is not None else type(self).forward(self, *args, **kwargs)


def _restrict_kernel(module: torch.nn.Module, kernel: SDPBackend | None) -> None:
    """Run ``module.forward`` inside ``sdpa_kernel([kernel])`` (None: undo).

    The forward is replaced on the instance because the processors of UNets, SD3 and Stable Audio call
    ``F.scaled_dot_product_attention`` directly and PyTorch selects its kernel only through the
    ``sdpa_kernel`` context, which must enclose the whole call (forward hooks cannot close it when the
    forward raises). The replacement is a bound method, so ``copy.deepcopy`` binds it to the copy.
    """
    restriction = module.__dict__.pop(_RESTRICTION, None)
    if restriction is not None:
        del module.forward
        if restriction[1] is not None:
            module.forward = restriction[1]
    if kernel is None:
        return
    module.__dict__[_RESTRICTION] = (kernel, module.__dict__.get("forward"))
    module.forward = types.MethodType(_restricted_forward, module)


def set_attention_backend(module: torch.nn.Module, backend: str = "sdpa") -> torch.nn.Module:
    """Switch ``module``'s attention to ``backend`` (one of :data:`BACKENDS`); returns ``module``."""
    check_backend(backend)
    _set_processors(module, backend)
    _restrict_kernel(module, SDPA_KERNELS.get(backend))
    return module


def transformers_attention(backend: str) -> str:
    """The ``attn_implementation`` of a transformers model for ``backend`` (MusicGen)."""
    check_backend(backend)
    if backend in ("efficient", "cudnn", "xformers"):
        raise ConfigError(f"transformers models (MusicGen) have no {backend!r} attention; use 'sdpa', 'math' or 'flash'")
    if backend == "flash" and (importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available()):
        raise ConfigError("attention 'flash' for transformers models needs CUDA and the flash-attn package")
    return {"sdpa": "sdpa", "math": "eager", "flash": "flash_attention_2"}[backend]
