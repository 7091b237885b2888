"""Generators: one sampling interface over image, video and audio models.

``load_generator(name)`` accepts a preset (``synth-sdxl``, ``synth-video``, ``synth-audio``), a local
folder saved with ``save_pretrained`` or a Hugging Face hub id, and returns a
:class:`~mmalign.generators.base.Generator` of the right family; ``lora=`` attaches one or several
LoRAs (:mod:`mmalign.generators.lora`), each at its weight. Families are registered in
:data:`FAMILIES` (:class:`~mmalign.registry.Registry`) by their class statements.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from mmalign.devices import resolve_device, resolve_dtype
from mmalign.errors import ConfigError, InputError
from mmalign.generators._common import DiffusersGenerator, read_defaults, read_json_object
from mmalign.generators.base import FAMILIES, DiffusionAdapter, Generator
from mmalign.generators.lora import LoraArg, LoraSpec, lora_specs, resolve_lora_file
from mmalign.paths import asset_path, is_offline

#: modules of the built-in families; imported on first use, so `import mmalign.generators` (and the
#: CLI) does not pay for diffusers' pipelines until a model is loaded
BUILTIN_FAMILIES = ("sd", "sdxl", "sd3", "animatediff", "animatediff_sdxl", "wan", "stable_audio", "musicgen")

_RESAVE = "save the model again with save_pretrained"

#: transformers ``model_type`` of a saved MusicGen (its folder's ``config.json``)
MUSICGEN_MODEL_TYPE = "musicgen"

#: preset name (a folder under assets/models/) -> the command that trains it
PRESETS: dict[str, str] = {
    "synth-sdxl": "python -m mmalign.zoo.train_sdxl",
    "synth-video": "python -m mmalign.zoo.train_video",
    "synth-audio": "python -m mmalign.zoo.train_audio",
}


def _import_families() -> None:
    for module in BUILTIN_FAMILIES:
        importlib.import_module(f"mmalign.generators.{module}")


def family_class(family: str) -> type[Generator]:
    """The Generator class registered as ``family`` (ConfigError naming the nearest family otherwise)."""
    _import_families()
    return FAMILIES.get(family)


def list_generators() -> dict[str, list[str]]:
    """Known families and presets."""
    _import_families()
    return {"families": FAMILIES.names(), "presets": sorted(PRESETS)}


def _pipeline_families() -> dict[str, str]:
    """diffusers pipeline class name (a saved folder's ``_class_name``) -> family."""
    _import_families()
    return {cls.pipeline_class.__name__: name for name, cls in FAMILIES.items() if issubclass(cls, DiffusersGenerator)}


def detect_family(folder: Path) -> str:
    """Family of a saved model folder, from ``model_index.json`` (diffusers) or ``config.json`` (transformers)."""
    index, config = folder / "model_index.json", folder / "config.json"
    if index.is_file():
        key = read_json_object(index, InputError, _RESAVE).get("_class_name", "")
        where = f"{index} _class_name"
    elif config.is_file():
        key = read_json_object(config, InputError, _RESAVE).get("model_type", "")
        where = f"{config} model_type"
    else:
        raise InputError(f"{folder} has neither model_index.json (diffusers pipeline) nor config.json "
                         "(transformers model); point --generator at a folder saved with save_pretrained")
    saved = {**_pipeline_families(), MUSICGEN_MODEL_TYPE: "musicgen"}
    if key not in saved:
        raise ConfigError(f"{where} = {key!r} is not a supported generator; supported: {sorted(saved)} "
                          f"(or pass family= one of {FAMILIES.names()})")
    return saved[key]


def _absent_components(folder: Path) -> dict[str, None]:
    """Components saved as ``[null, null]`` (e.g. SD3 without T5), passed as None so diffusers accepts them."""
    index = read_json_object(folder / "model_index.json", InputError, _RESAVE)
    return {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}


def _hub_error(name: str, err: Exception) -> InputError:
    return InputError(
        f"could not load generator {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
        "Without network access (or with HF_HUB_OFFLINE=1) point at a local folder instead: "
        "`--generator /path/to/folder` or load_generator('/path/to/folder', local_files_only=True), "
        "with the model downloaded there beforehand (e.g. `huggingface-cli download ID --local-dir FOLDER`)."
    )


def load_generator(id_or_path_or_preset: str | os.PathLike, family: str | None = None, device: str = "auto",
                   dtype: str | torch.dtype | None = None, local_files_only: bool | None = None,
                   attention: str = "sdpa", lora: LoraArg | Sequence[LoraArg] | None = None) -> Generator:
    """Load a generator from a preset, a local ``save_pretrained`` folder or a hub id.

    A hub id is passed to diffusers' (or transformers') ``from_pretrained`` unchanged. ``family`` is
    detected from the folder's ``model_index.json`` (or the loaded pipeline's class) when not given.
    ``lora``: one LoRA or a list — each a folder, a ``.safetensors`` file, a hub id (resolved like the
    generator, offline from the cache), a ``(path, weight)`` pair or a :class:`~mmalign.generators.lora.LoraSpec`
    — attached with the family's multi-adapter mechanism (:meth:`DiffusersGenerator.load_loras`). A missing
    LoRA fails before the model loads; one for another architecture before the generator is returned.
    ``dtype``: fp32 / bf16 / fp16 / ``"auto"`` (:mod:`mmalign.devices`; for a local folder ``auto`` weighs the
    denoiser's parameter count from its weight files) or None (fp32 on CPU, bf16/fp16 on CUDA); the
    weights are loaded in it once, so sampling computes in it without autocast.
    """
    name = str(id_or_path_or_preset)
    loras, lora_local = lora_specs(lora), local_files_only  # hub LoRAs: offline only if asked (or HF_HUB_OFFLINE)
    for spec in loras:  # a missing file fails before the model loads
        resolve_lora_file(spec.source, spec.weight_name, lora_local)
    dev = resolve_device(device)
    if name in PRESETS:
        folder = asset_path("models", name)
        if not (folder / "model_index.json").is_file():
            raise InputError(f"preset {name!r} is not built: {folder} is missing. Train it with `{PRESETS[name]}`")
        source: str = str(folder)
    else:
        source = name
    local = Path(source).is_dir()
    if local:
        family = family or detect_family(Path(source))
        local_files_only = True if local_files_only is None else local_files_only
    else:
        local_files_only = is_offline(local_files_only)
    defaults = read_defaults(source) if local else {}
    defaults.pop("family", None)
    params = None
    if dtype == "auto" and local:  # the size of the compute model, from the weight files' headers
        params = saved_parameters(Path(source) if family == "musicgen" else Path(source) / family_class(family).denoiser_name)
    dt = resolve_dtype(dtype, dev, params=params, what=f"generator {name!r}")

    if family == "musicgen":
        if loras:
            raise ConfigError(f"lora: {source} is a MusicGen, a sampling-only language model; LoRAs attach to "
                              "diffusion generators")
        return _load_musicgen(source, dev, dt, local_files_only, attention, defaults)
    cls = family_class(family) if family else None
    try:
        import diffusers

        loader = cls.pipeline_class if cls is not None else diffusers.DiffusionPipeline
        pipe = loader.from_pretrained(source, local_files_only=local_files_only, torch_dtype=dt,
                                      **(_absent_components(Path(source)) if local else {}))
    except (OSError, ValueError) as e:
        if local:
            raise InputError(f"could not load the pipeline in {source}: {e}") from e
        raise _hub_error(source, e) from e
    if cls is None:
        pipelines = _pipeline_families()
        if type(pipe).__name__ not in pipelines:
            raise ConfigError(f"{source} is a {type(pipe).__name__}, not a supported generator; "
                              f"supported pipelines: {sorted(pipelines)}")
        cls = family_class(pipelines[type(pipe).__name__])
    # device only: the dtype came with from_pretrained, which keeps a model's fp32-only modules (Wan's norms) in fp32
    gen = cls(pipe.to(dev), dev, defaults)
    from mmalign.generators.attention import set_attention_backend

    set_attention_backend(gen.denoiser, attention)
    if loras:
        gen.load_loras(loras, lora_local)
    return gen


def saved_parameters(folder: Path) -> int | None:
    """Parameters stored in ``folder``'s ``*.safetensors`` files, read from their headers (None: no such files)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def _load_musicgen(source: str, dev: torch.device, dt: torch.dtype, local_files_only: bool, attention: str,
                   defaults: dict[str, Any]) -> Generator:
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from mmalign.generators.attention import transformers_attention
    from mmalign.generators.musicgen import MusicGenGenerator

    try:
        impl = transformers_attention(attention)
        extra = {} if impl == "sdpa" else {"attn_implementation": impl}  # EnCodec has no SDPA path: default picks per part
        model = MusicgenForConditionalGeneration.from_pretrained(source, local_files_only=local_files_only, dtype=dt,
                                                                 **extra)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        if Path(source).is_dir():
            raise InputError(f"could not load MusicGen from {source}: {e}") from e
        raise _hub_error(source, e) from e
    return MusicGenGenerator(model.to(dev), tokenizer, dev, defaults)


__all__ = ["load_generator", "list_generators", "detect_family", "FAMILIES", "PRESETS", "Generator",
           "DiffusionAdapter", "DiffusersGenerator", "family_class", "LoraSpec"]
