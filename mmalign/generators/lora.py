"""LoRA adapters of a generator's denoiser: on disk in diffusers' format, in memory as low-rank factors.

A LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3) adds to a linear
layer ``W ∈ R^{out×in}`` the update ``ΔW = (α / r) · B · A`` with ``A ∈ R^{r×in}``, ``B ∈ R^{out×r}``.

On disk (:func:`write_lora`) a LoRA folder holds

* :data:`LORA_FILE` — the file diffusers' ``save_lora_weights`` writes (keys
  ``<prefix>.<module>.lora_A.weight`` / ``lora_B.weight``, and the peft ``LoraConfig`` of each
  component in the safetensors metadata ``lora_adapter_metadata``, which records r and α), so that
  ``Pipeline.from_pretrained(base).load_lora_weights(folder)`` restores the exact scaling α/r with no
  extra argument (diffusers ``loaders/lora_base.py::LoraBaseMixin.write_lora_layers`` @ 58eb52c0).
  Families whose diffusers pipeline has no LoRA loader (Stable Audio) get peft's own format instead,
  :data:`PEFT_FILE` + :data:`PEFT_CONFIG` (``PeftModel.from_pretrained`` / ``set_peft_model_state_dict``);
* :data:`LORA_CONFIG` — a small validated sidecar (:class:`LoraCard`): family, denoiser prefix,
  rank, α, target modules and provenance.

:func:`read_lora` reads that folder, a single ``.safetensors`` file, a peft folder, a LoRA saved by
diffusers' training scripts or by kohya's sd-scripts (converted with the family pipeline's own
``lora_state_dict``, as ``load_lora_weights`` converts it) or a hub file (offline: from the local cache).
:func:`check_lora` checks a LoRA against a denoiser (module paths and shapes) before any work.
"""

from __future__ import annotations

import collections
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import torch
from pydantic import Field

from mmalign.cards import Card, validate
from mmalign.errors import ConfigError, InputError
from mmalign.paths import is_offline

#: diffusers' LoRA weight file (``LORA_WEIGHT_NAME_SAFE`` in ``diffusers/loaders/lora_base.py``)
LORA_FILE = "pytorch_lora_weights.safetensors"
#: mmalign's sidecar next to it (:class:`LoraCard`)
LORA_CONFIG = "mmalign_lora.json"
#: peft's adapter files (``SAFETENSORS_WEIGHTS_NAME`` / ``CONFIG_NAME`` in ``peft/utils/constants.py``)
PEFT_FILE = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
#: every file a LoRA folder written by :func:`write_lora` may hold
LORA_FOLDER_FILES = (LORA_FILE, LORA_CONFIG, PEFT_FILE, PEFT_CONFIG)


# --- in memory -----------------------------------------------------------------------------------


@dataclass
class LoraLayer:
    """One LoRA layer: ``ΔW = (α / r) · B · A`` (Hu et al. 2021, eq. 3).

    ``A``: ``[r, in]`` (``[r, in, kh, kw]`` for a conv layer), ``B``: ``[out, r]`` (``[out, r, 1, 1]``).
    """

    A: torch.Tensor
    B: torch.Tensor
    alpha: float

    def __post_init__(self) -> None:
        if self.A.ndim not in (2, 4) or self.B.ndim != self.A.ndim or self.B.shape[1] != self.A.shape[0]:
            raise ConfigError(f"LoRA factors of shapes A {tuple(self.A.shape)}, B {tuple(self.B.shape)} do not "
                              "form B·A (A: [r, in], B: [out, r])")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def scale(self) -> float:
        """α / r."""
        return float(self.alpha) / self.rank

    @property
    def is_conv(self) -> bool:
        return self.A.ndim == 4

    def delta(self) -> torch.Tensor:
        """``ΔW = (α / r) · B · A`` ``[out, in]``, in fp32."""
        if self.is_conv:
            raise ConfigError("a conv LoRA layer (kohya LoCon) is not supported here: ΔW is defined for linear layers")
        return self.scale * (self.B.float() @ self.A.float())


@dataclass
class LoraState:
    """The LoRA layers of one denoiser, keyed by module path inside it (no component prefix), e.g.
    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``.

    ``prefix`` is the denoiser's pipeline component (``"unet"`` / ``"transformer"``), ``source`` where
    it was read from; ``ignored`` names the other components a file held LoRA layers for (e.g. a kohya
    file's ``text_encoder``), which :func:`read_lora` does not return.
    """

    layers: dict[str, LoraLayer]
    family: str | None = None
    prefix: str = "unet"
    source: str = ""
    ignored: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The most common rank (as diffusers' ``get_peft_kwargs`` picks ``r``)."""
        return collections.Counter(layer.rank for layer in self.layers.values()).most_common(1)[0][0]

    @property
    def alpha(self) -> float:
        """The most common α."""
        return collections.Counter(float(layer.alpha) for layer in self.layers.values()).most_common(1)[0][0]

    @property
    def targets(self) -> list[str]:
        """The module names the layers sit on (``to_q``, ``to_out.0``, ...)."""
        return sorted({target_name(path) for path in self.layers})


def target_name(path: str) -> str:
    """The module name of a path: its last component, with the one before for a list index (``to_out.0``)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


# --- the sidecar -----------------------------------------------------------------------------------


class LoraCard(Card):
    """``mmalign_lora.json``: what a LoRA folder holds, next to its weights."""

    format: Literal["diffusers", "peft"] = Field(description="diffusers: pytorch_lora_weights.safetensors; "
                                                 "peft: adapter_model.safetensors + adapter_config.json")
    family: str | None = Field(None, description="Generator family it was trained for (mmalign.generators.FAMILIES)")
    prefix: str = Field(description="Pipeline component of the denoiser: unet or transformer")
    rank: int = Field(ge=1, description="Most common rank r")
    alpha: float = Field(gt=0, description="Most common α (scaling α/r)")
    layers: int = Field(ge=1, description="Number of LoRA layers")
    targets: list[str] = Field(description="Module names the layers sit on (peft target_modules)")
    provenance: dict[str, Any] = Field(default_factory=dict,
                                       description="Where it came from: recipe, training method, merge method and inputs")


# --- family helpers ---------------------------------------------------------------------------------


def _family_pipeline(family: str | None) -> type | None:
    if family is None:
        return None
    from mmalign.generators import family_class

    return getattr(family_class(family), "pipeline_class", None)


def lora_loader(family: str | None, prefix: str = "unet") -> type | None:
    """The diffusers LoRA loader mixin of ``family``'s pipeline (None where it has none, e.g. Stable Audio).

    With no family, the loader of the denoiser's component: SD's for ``unet``, SD3's for ``transformer``
    (their ``save_lora_weights`` and ``lora_state_dict`` only prefix and convert keys).
    """
    from diffusers.loaders import SD3LoraLoaderMixin, StableDiffusionLoraLoaderMixin
    from diffusers.loaders.lora_base import LoraBaseMixin

    if family is None:
        return StableDiffusionLoraLoaderMixin if prefix == "unet" else SD3LoraLoaderMixin
    pipe = _family_pipeline(family)
    return pipe if pipe is not None and issubclass(pipe, LoraBaseMixin) else None


def denoiser_prefix(family: str) -> str:
    """The pipeline component a family trains (``unet`` / ``transformer``)."""
    from mmalign.generators import family_class

    cls = family_class(family)
    if not hasattr(cls, "pipeline_class"):
        raise ConfigError(f"family {family!r} is not a diffusion pipeline; it has no LoRA")
    return cls.denoiser_name


# --- locating a LoRA --------------------------------------------------------------------------------


def _hub_file(repo: str, filename: str, local_files_only: bool, given: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=local_files_only))
    except (OSError, ValueError) as e:
        raise InputError(
            f"LoRA {given!r}: not a local file or folder, and as the hub file {filename!r} of {repo!r} it could not be "
            f"found ({type(e).__name__}: {e}). Without network access (or with HF_HUB_OFFLINE=1) download it "
            f"beforehand (`huggingface-cli download {repo} {filename} --local-dir FOLDER`) and pass FOLDER"
        ) from e


def resolve_lora_file(source: str | os.PathLike, weight_name: str | None = None,
                      local_files_only: bool | None = None) -> Path:
    """The weight file of a LoRA: a ``.safetensors`` file, a folder (``weight_name``, else :data:`LORA_FILE`,
    :data:`PEFT_FILE` or its only ``.safetensors``) or a hub id ``org/name`` (with ``weight_name``, default
    :data:`LORA_FILE`; ``org/name/file.safetensors`` names the file too), resolved offline like generators."""
    given = str(source)
    path = Path(given).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(f"LoRA {path}: not a .safetensors file; pickled checkpoints (.bin, .pt) are not read, "
                             "convert it with safetensors.torch.save_file")
        return path
    if path.is_dir():
        if weight_name is not None:
            if not (path / weight_name).is_file():
                raise InputError(f"LoRA {path}: has no {weight_name}")
            return resolve_lora_file(path / weight_name)
        for name in (LORA_FILE, PEFT_FILE):
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) != 1:
            raise InputError(f"LoRA {path}: holds {'no' if not found else 'several'} .safetensors files "
                             f"{found if found else ''}; expected {LORA_FILE} (diffusers) or {PEFT_FILE} (peft), "
                             "or name one with weight_name / PATH/FILE.safetensors")
        return path / found[0]
    parts = given.split("/")
    local_only = is_offline(local_files_only)
    if len(parts) == 2 and all(parts) and not given.startswith((".", "~")) and Path(given).suffix == "":
        return _hub_file(given, weight_name or LORA_FILE, local_only, given)
    if len(parts) >= 3 and given.endswith(".safetensors") and not path.is_absolute() and not given.startswith((".", "~")):
        return _hub_file("/".join(parts[:2]), "/".join(parts[2:]), local_only, given)
    raise InputError(f"LoRA {given}: no such file or folder; pass a LoRA folder (with {LORA_FILE}), a .safetensors "
                     "file or a hub id org/name")


def read_card(folder: str | os.PathLike) -> LoraCard | None:
    """The validated :data:`LORA_CONFIG` in ``folder`` (None when there is none)."""
    path = Path(folder) / LORA_CONFIG
    if not path.is_file():
        return None
    from mmalign.generators._common import read_json_object

    return validate(read_json_object(path, ConfigError, "fix or delete it"), LoraCard, where=str(path))


# --- reading -------------------------------------------------------------------------------------------


def _safetensors_header(file: Path) -> dict[str, str]:
    """The file's safetensors metadata; InputError naming the file when it is not a readable safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except (OSError, SafetensorError, ValueError) as e:
        raise InputError(f"LoRA {file}: not a readable safetensors file ({e}); write it again or point at another file") from e


def _lora_config(kwargs: Mapping[str, Any], where: str) -> Any:
    from peft import LoraConfig

    try:
        config = LoraConfig(**kwargs)  # as diffusers' _create_lora_config builds it
    except (TypeError, ValueError) as e:
        raise InputError(f"LoRA {where}: its LoRA config does not load as a peft LoraConfig ({e})") from e
    if config.use_dora or config.lora_bias:
        raise ConfigError(f"LoRA {where}: {'DoRA' if config.use_dora else 'a LoRA bias (lora_bias)'} is not supported; "
                          "use a plain LoRA")
    return config


def _layers(peft_sd: Mapping[str, torch.Tensor], config_kwargs: Mapping[str, Any], where: str) -> dict[str, LoraLayer]:
    """LoRA layers of a peft-named state dict (``<module>.lora_A.weight``), each with the r and α the
    config's ``rank_pattern`` / ``alpha_pattern`` give it (peft ``LoraModel._create_and_replace``)."""
    from peft.utils.other import get_pattern_key

    config = _lora_config(config_kwargs, where)
    modules = sorted({k.split(".lora_A.")[0] for k in peft_sd if ".lora_A." in k})
    other = sorted(k for k in peft_sd if ".lora_A." not in k and ".lora_B." not in k)
    if other:
        raise InputError(f"LoRA {where}: keys that are not LoRA factors, e.g. {other[:3]}; expected "
                         "<module>.lora_A.weight / <module>.lora_B.weight")
    if not modules:
        raise InputError(f"LoRA {where}: holds no LoRA layers of the denoiser")
    layers = {}
    for m in modules:
        a, b = peft_sd.get(f"{m}.lora_A.weight"), peft_sd.get(f"{m}.lora_B.weight")
        if a is None or b is None:
            raise InputError(f"LoRA {where}: layer {m} lacks {'lora_A' if a is None else 'lora_B'}.weight")
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), m), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), m), config.lora_alpha)
        if r != a.shape[0]:
            raise ConfigError(f"LoRA {where}: layer {m} has rank {a.shape[0]} but its config says r={r}; "
                              "mismatched ranks, save the LoRA again")
        if config.use_rslora:  # scale α/√r (Kalajdzievski 2023) written as an equivalent α' with α'/r = α/√r
            alpha = alpha * math.sqrt(r)
        try:
            layers[m] = LoraLayer(a, b, float(alpha))
        except ConfigError as e:
            raise ConfigError(f"LoRA {where}: layer {m}: {e}") from e
    return layers


def _rank_alpha_kwargs(peft_sd: Mapping[str, torch.Tensor], alphas: Mapping[str, float] | None) -> dict[str, Any]:
    """LoraConfig kwargs of a file without adapter metadata, as diffusers' ``load_lora_adapter`` derives them
    (``diffusers/loaders/peft.py`` rank dict, ``diffusers/utils/peft_utils.py::get_peft_kwargs``)."""
    from diffusers.utils.peft_utils import get_peft_kwargs

    rank = {f"^{k}": v.shape[1] for k, v in peft_sd.items() if "lora_B" in k and v.ndim > 1}
    return get_peft_kwargs(rank, network_alpha_dict=alphas, peft_state_dict=peft_sd, is_unet=True)


def _strip(d: Mapping[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    if d is None:
        return None
    return {k.removeprefix(f"{prefix}."): v for k, v in d.items() if k.startswith(f"{prefix}.")}


def _read_peft(file: Path, card: LoraCard | None, family: str | None) -> LoraState:
    from safetensors.torch import load_file

    from mmalign.generators._common import read_json_object

    config_path = file.parent / PEFT_CONFIG
    config = read_json_object(config_path, InputError, "save the adapter again with save_pretrained")
    sd = {k.removeprefix("base_model.model."): v for k, v in load_file(str(file)).items()}
    family = family or (card.family if card else None)
    prefix = card.prefix if card else (denoiser_prefix(family) if family else "")
    return LoraState(_layers(sd, config, str(file)), family, prefix, str(file),
                     provenance=dict(card.provenance) if card else {})


def read_lora(source: str | os.PathLike, weight_name: str | None = None, local_files_only: bool | None = None, *,
              family: str | None = None, denoiser_config: Mapping[str, Any] | None = None) -> LoraState:
    """Read a LoRA: a folder, a ``.safetensors`` file or a hub id (:func:`resolve_lora_file`).

    ``family`` (else the folder's :data:`LORA_CONFIG`) picks the pipeline whose ``lora_state_dict``
    converts files of other trainers (kohya's ``lora_unet_*`` keys; SDXL's original block names need
    ``denoiser_config``, the UNet's config, as ``load_lora_weights`` passes it). α comes from the file's
    adapter metadata, else from kohya's ``.alpha`` keys, else α = r — as diffusers loads it.
    """
    file = resolve_lora_file(source, weight_name, local_files_only)
    _safetensors_header(file)  # a broken file fails here, with its name
    card = read_card(file.parent)
    if file.name == PEFT_FILE and (file.parent / PEFT_CONFIG).is_file():
        return _read_peft(file, card, family)
    family = family or (card.family if card else None)
    prefix = denoiser_prefix(family) if family else (card.prefix if card else None)
    loader = lora_loader(family, prefix or "unet")
    if loader is None:
        raise InputError(f"LoRA {file}: family {family} has no diffusers LoRA loader; its LoRAs are saved in peft's "
                         f"format ({PEFT_FILE} + {PEFT_CONFIG})")
    kwargs: dict[str, Any] = {"return_lora_metadata": True, "local_files_only": True}
    if prefix in (None, "unet") and denoiser_config is not None:
        kwargs["unet_config"] = denoiser_config
    try:
        out = loader.lora_state_dict(str(file), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"LoRA {file}: diffusers could not read it as a LoRA ({type(e).__name__}: {e})") from e
    sd, alphas, metadata = out if len(out) == 3 else (out[0], None, out[1])
    components = sorted({k.split(".", 1)[0] for k in sd})
    if prefix is None:
        found = [c for c in ("unet", "transformer") if c in components]
        if not found:
            raise InputError(f"LoRA {file}: its keys name the components {components[:5]}, none a denoiser (unet or "
                             "transformer); it is not a LoRA of a diffusion model mmalign knows")
        prefix = found[0]
    if prefix not in components:
        raise InputError(f"LoRA {file}: holds no LoRA layers for the {prefix} (components in the file: {components}); "
                         f"it was trained for another architecture")
    from diffusers.utils import convert_unet_state_dict_to_peft

    peft_sd = _strip(sd, prefix)
    if "lora_A" not in next(iter(peft_sd)):
        peft_sd = convert_unet_state_dict_to_peft(peft_sd)
    meta = _strip(metadata, prefix) if metadata else None
    config = meta or _rank_alpha_kwargs(peft_sd, _strip(alphas, prefix) if alphas else None)
    return LoraState(_layers(peft_sd, config, str(file)), family, prefix, str(file),
                     tuple(c for c in components if c != prefix), dict(card.provenance) if card else {})


# --- checking against a denoiser -------------------------------------------------------------------------


def check_lora(state: LoraState, denoiser: torch.nn.Module) -> None:
    """ConfigError naming ``state.source`` unless every layer sits on a module of ``denoiser`` with matching
    shapes (``A: [r, in]``, ``B: [out, r]`` for the module's weight ``[out, in, ...]``)."""
    modules = dict(denoiser.named_modules())
    kind = type(denoiser).__name__
    missing = [p for p in state.layers if p not in modules]
    if missing:
        raise ConfigError(f"LoRA {state.source}: {len(missing)} of its {len(state.layers)} layers name modules the "
                          f"{kind} does not have (e.g. {missing[0]}); it was trained for another architecture")
    for path, layer in state.layers.items():
        module = getattr(modules[path], "base_layer", modules[path])
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != layer.A.ndim:
            raise ConfigError(f"LoRA {state.source}: layer {path} is a {'conv' if layer.is_conv else 'linear'} LoRA "
                              f"but the {kind}'s module there is a {type(module).__name__}")
        out_f, in_f = weight.shape[:2]
        if (layer.A.shape[1], layer.B.shape[0]) != (in_f, out_f) or layer.A.shape[2:] != weight.shape[2:]:
            raise ConfigError(f"LoRA {state.source}: layer {path} maps {layer.A.shape[1]} -> {layer.B.shape[0]} "
                              f"features, the {kind}'s {type(module).__name__} there maps {in_f} -> {out_f}; it was "
                              "trained for another architecture (or another size of this one)")


# --- from a model with peft layers ---------------------------------------------------------------------


def lora_from_model(model: torch.nn.Module, adapter_name: str = "default", family: str | None = None,
                    prefix: str = "unet", source: str = "") -> LoraState:
    """The LoRA ``adapter_name`` injected into ``model`` by peft, as a :class:`LoraState` (fp32, on CPU)."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    layers = {}
    for path, module in model.named_modules():
        if not isinstance(module, PeftLoraLayer) or adapter_name not in module.lora_A:
            continue
        if adapter_name in getattr(module, "lora_magnitude_vector", {}) or module.lora_B[adapter_name].bias is not None:
            raise ConfigError(f"{path}: DoRA and LoRA biases are not exported; train a plain LoRA")
        a = module.lora_A[adapter_name].weight.detach().float().cpu().contiguous()
        b = module.lora_B[adapter_name].weight.detach().float().cpu().contiguous()
        alpha = module.scaling[adapter_name] * a.shape[0]  # α' with α'/r = the layer's scaling (rsLoRA included)
        layers[path] = LoraLayer(a, b, float(module.lora_alpha[adapter_name]) if math.isclose(
            alpha, module.lora_alpha[adapter_name], rel_tol=1e-12) else alpha)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapter named {adapter_name!r}")
    return LoraState(layers, family, prefix, source)


# --- writing ---------------------------------------------------------------------------------------------


def peft_state_dict(state: LoraState) -> dict[str, torch.Tensor]:
    """The layers as peft names them (``<module>.lora_A.weight``; ``get_peft_model_state_dict``), fp32."""
    out = {}
    for path, layer in state.layers.items():
        out[f"{path}.lora_A.weight"] = layer.A.detach().float().cpu().contiguous()
        out[f"{path}.lora_B.weight"] = layer.B.detach().float().cpu().contiguous()
    return out


def lora_config_kwargs(state: LoraState) -> dict[str, Any]:
    """peft ``LoraConfig`` kwargs that give every layer its own r and α: the most common r and α, and
    ``rank_pattern`` / ``alpha_pattern`` for the others (anchored full paths, as diffusers writes them)."""
    r, alpha = state.rank, state.alpha
    rank_pattern = {f"^{re.escape(p)}": layer.rank for p, layer in state.layers.items() if layer.rank != r}
    alpha_pattern = {f"^{re.escape(p)}": float(layer.alpha) for p, layer in state.layers.items()
                     if float(layer.alpha) != alpha}
    return {"r": r, "lora_alpha": alpha, "target_modules": sorted(state.layers), "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern, "lora_dropout": 0.0, "bias": "none", "use_dora": False,
            "use_rslora": False, "init_lora_weights": True}


def write_lora_files(folder: str | os.PathLike, state: LoraState, extra: Mapping[str, Any] | None = None) -> str:
    """Write ``state`` into the existing ``folder`` (not atomic; see :func:`write_lora`); returns the format.

    diffusers' format through the family pipeline's own ``save_lora_weights`` (with the
    ``<prefix>_lora_adapter_metadata`` that records r and α) where it has a LoRA loader, else peft's.
    """
    if not state.layers:
        raise ConfigError(f"LoRA {state.source or '(in memory)'} has no layers; nothing to write")
    folder = Path(folder)
    if state.prefix not in ("unet", "transformer"):
        raise ConfigError(f"LoRA {state.source or '(in memory)'}: denoiser component {state.prefix!r} is unknown; "
                          "set its family (or prefix 'unet' / 'transformer') before writing it")
    sd, config = peft_state_dict(state), lora_config_kwargs(state)
    loader = lora_loader(state.family, state.prefix)
    if loader is not None:
        loader.save_lora_weights(folder, **{f"{state.prefix}_lora_layers": sd,
                                            f"{state.prefix}_lora_adapter_metadata": config})
        fmt = "diffusers"
    else:
        from safetensors.torch import save_file

        save_file(sd, str(folder / PEFT_FILE), metadata={"format": "pt"})
        _lora_config(config, str(folder)).save_pretrained(str(folder))
        fmt = "peft"
    card = LoraCard(format=fmt, family=state.family, prefix=state.prefix, rank=state.rank, alpha=state.alpha,
                    layers=len(state.layers), targets=state.targets, provenance={**state.provenance, **(extra or {})})
    from mmalign.fileio import atomic_write_json

    atomic_write_json(folder / LORA_CONFIG, card.model_dump(mode="json"), indent=2)
    return fmt


def write_lora(folder: str | os.PathLike, state: LoraState, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` as a LoRA folder, atomically (:func:`mmalign.checkpoint.atomic_folder`): :data:`LORA_FILE`
    (or peft's files for a family without a diffusers loader) and :data:`LORA_CONFIG`, whose ``provenance``
    gets ``extra``. An existing folder is replaced only if it holds nothing but LoRA files."""
    from mmalign.checkpoint import atomic_folder

    folder = Path(folder)
    if folder.exists():
        other = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [folder.name]
        other = [n for n in other if n not in LORA_FOLDER_FILES]
        if other:
            raise ConfigError(f"{folder} exists and holds other files ({other[:3]}); write the LoRA to a new folder")
    return atomic_folder(folder, lambda tmp: write_lora_files(tmp, state, extra))


# --- which LoRAs to load ------------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    """One LoRA to load with a generator: where it is, its weight (diffusers ``set_adapters``), and for a hub
    repo the file in it."""

    source: str
    weight: float = 1.0
    weight_name: str | None = None


#: one LoRA as ``load_generator(..., lora=...)`` takes it
LoraArg = Union[str, os.PathLike, tuple[Union[str, os.PathLike], float], LoraSpec]


def lora_specs(lora: LoraArg | Sequence[LoraArg] | None) -> list[LoraSpec]:
    """``load_generator``'s ``lora=``: None, one LoRA or a list of them, each a path / hub id, a
    ``(path, weight)`` pair or a :class:`LoraSpec` (a 2-tuple is always one ``(path, weight)``)."""
    if lora is None:
        return []
    items = list(lora) if isinstance(lora, (list, tuple)) and not _is_pair(lora) else [lora]
    specs = []
    for item in items:
        if isinstance(item, LoraSpec):
            specs.append(item)
        elif _is_pair(item):
            specs.append(LoraSpec(str(item[0]), _weight(item[1], str(item[0]))))
        elif isinstance(item, (str, os.PathLike)):
            specs.append(LoraSpec(str(item)))
        else:
            raise ConfigError(f"lora={item!r}: expected a path, a hub id, (path, weight) or a LoraSpec")
    return specs


def _is_pair(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (str, os.PathLike))


def _weight(value: Any, where: str) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"LoRA {where}: weight {value!r} is not a number; write PATH@0.7") from e
    if not math.isfinite(w):
        raise InputError(f"LoRA {where}: weight {value!r} is not a finite number")
    return w


def parse_lora_arg(text: str) -> LoraSpec:
    """``--lora PATH`` or ``--lora PATH@WEIGHT`` (default weight 1.0); a weight that is not a number is an
    InputError. An ``@`` inside a path (followed by more path) is part of the path."""
    path, sep, weight = text.rpartition("@")
    if not sep or "/" in weight or os.sep in weight or Path(text).exists():
        return LoraSpec(text)
    return LoraSpec(path, _weight(weight, path))


#: help of every command's ``--lora``
LORA_HELP = ("a LoRA to attach (folder, .safetensors file or hub id org/name); repeatable; PATH@0.7 sets its "
             "weight (default 1.0)")


def parse_lora_args(values: Sequence[str] | None) -> list[LoraSpec]:
    """Every ``--lora`` of a command."""
    return [parse_lora_arg(v) for v in values or ()]


__all__ = ["LORA_FILE", "LORA_CONFIG", "PEFT_FILE", "PEFT_CONFIG", "LoraLayer", "LoraState", "LoraCard", "LoraSpec",
           "read_lora", "write_lora", "write_lora_files", "check_lora", "lora_from_model", "resolve_lora_file",
           "read_card", "lora_loader", "denoiser_prefix", "peft_state_dict", "lora_config_kwargs", "lora_specs",
           "parse_lora_arg", "parse_lora_args", "target_name", "LORA_HELP", "LoraArg"]
