"""Find a scorer's weights: user folder, card path, shipped assets, Hugging Face cache or a URL.

Offline mode (``local_files_only=True``, or the environment variable ``MMALIGN_OFFLINE=1`` or
``HF_HUB_OFFLINE=1``) never touches the network; a missing file is an :class:`InputError` that
says exactly where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmalign.errors import InputError
from mmalign.fileio import atomic_write
from mmalign.paths import asset_path, is_offline
from mmalign.scoring.card import CheckpointSpec

WEIGHTS_ENV = "MMALIGN_WEIGHTS_DIR"


def weights_dir() -> Path:
    """The user's weights folder: ``$MMALIGN_WEIGHTS_DIR`` or ``~/.cache/mmalign/weights``."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "mmalign" / "weights")


def _where_to_put(name: str, spec: CheckpointSpec) -> str:
    target = weights_dir() / name / (spec.filename or "")
    origin = {
        "hub": f"the Hugging Face repository {spec.repo_id!r}" + (f" (file {spec.filename!r})" if spec.filename else ""),
        "url": f"{spec.url}",
        "local": f"{spec.path}",
        "shipped": f"assets/{spec.path}",
        "none": "nowhere",
    }[spec.source]
    return (
        f"download it from {origin} and put it at {target} "
        f"(or set {WEIGHTS_ENV}, or point the card's checkpoint.path at it, then use source: local)"
    )


def resolve_checkpoint(name: str, spec: CheckpointSpec, local_files_only: bool | None = None) -> Path | str | None:
    """Return a local file/folder for ``spec`` (a hub id string for whole-repo hub sources online).

    Lookup order: ``$MMALIGN_WEIGHTS_DIR/<name>/<filename>`` (or the folder itself), the card's
    local or shipped path, then the hub/URL (cache only when offline).
    """
    if spec.source == "none":
        return None
    user = weights_dir() / name
    if spec.filename and (user / spec.filename).exists():
        return user / spec.filename
    if not spec.filename and user.is_dir() and any(user.iterdir()):
        return user
    if spec.source in ("local", "shipped"):
        if not spec.path:
            raise InputError(f"scorer {name!r}: checkpoint.source is {spec.source!r} but checkpoint.path is empty")
        base = Path(spec.path).expanduser() if spec.source == "local" else asset_path(spec.path)
        path = base / spec.filename if spec.filename and base.is_dir() else base
        if not path.exists():
            raise InputError(f"scorer {name!r}: weights not found at {path}; {_where_to_put(name, spec)}")
        return path
    offline = is_offline(local_files_only)
    if spec.source == "hub":
        if not spec.repo_id:
            raise InputError(f"scorer {name!r}: checkpoint.source is 'hub' but checkpoint.repo_id is empty")
        import huggingface_hub

        try:
            if spec.filename:
                return Path(huggingface_hub.hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, local_files_only=offline))
            return Path(huggingface_hub.snapshot_download(spec.repo_id, revision=spec.revision, local_files_only=offline))
        except Exception as exc:  # LocalEntryNotFoundError, connection errors, gated repos
            mode = "offline mode (local_files_only / MMALIGN_OFFLINE / HF_HUB_OFFLINE)" if offline else "download"
            raise InputError(f"scorer {name!r}: weights not available in {mode}: {type(exc).__name__}; {_where_to_put(name, spec)}") from exc
    # url
    if not spec.url or not spec.filename:
        raise InputError(f"scorer {name!r}: checkpoint.source is 'url' and needs both checkpoint.url and checkpoint.filename")
    cached = user / spec.filename
    if offline:
        raise InputError(f"scorer {name!r}: weights file {spec.filename!r} missing in offline mode; {_where_to_put(name, spec)}")
    import torch.hub

    try:
        atomic_write(cached, lambda tmp: torch.hub.download_url_to_file(spec.url, str(tmp), progress=True))
    except Exception as exc:
        raise InputError(f"scorer {name!r}: could not download {spec.url}: {exc}; {_where_to_put(name, spec)}") from exc
    return cached


def load_state_dict(path: Path, key: str | None = None) -> dict:
    """Load a safetensors or torch checkpoint (tensors only), optionally taking ``ckpt[key]``."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if key is not None:
        if not isinstance(sd, dict) or key not in sd:
            keys = list(sd)[:8] if isinstance(sd, dict) else type(sd).__name__
            raise InputError(f"checkpoint {path} has no entry {key!r} (found {keys}); fix checkpoint.state_dict_key")
        sd = sd[key]
    return sd
