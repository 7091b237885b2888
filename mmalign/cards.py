"""The one configuration layer: YAML cards validated by pydantic.

Scorer cards (``scorers/``), training recipes (``recipes/``), benchmark suites
(``assets/suites/<name>/suite.yaml``), the demo's settings and the generator sidecar
(``mmalign_generator.json``) are all :class:`Card` schemas, which forbid unknown keys.
:func:`load_card` finds a card by name in the shipped folder (a checkout or an installed wheel, see
:mod:`mmalign.paths`) or by path, applies ``--set a.b=c`` overrides (:func:`apply_overrides`, values
parsed as YAML, keys checked against the schema) and validates it once (:func:`validate`). Every
problem becomes one one-line :class:`~mmalign.errors.ConfigError` that names the file, the dotted key
and, for an unknown key, the nearest valid key.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from mmalign.errors import ConfigError
from mmalign.paths import asset_path, shipped_dir

Kind = Literal["scorers", "recipes", "suites"]
C = TypeVar("C", bound="Card")
_SUFFIXES = (".yaml", ".yml")


class Card(BaseModel):
    """Base of every card schema: unknown keys are errors; :attr:`source` is the file it came from."""

    model_config = ConfigDict(extra="forbid")
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source


#: a suite is a folder holding this file (and its prompt file)
SUITE_FILE = "suite.yaml"


def _folder(kind: Kind) -> Path:
    return asset_path("suites") if kind == "suites" else shipped_dir(kind)


def _shipped(kind: Kind) -> dict[str, Path]:
    """Shipped cards of ``kind``: name -> file (suites: the folder name -> ``<folder>/suite.yaml``)."""
    folder = _folder(kind)
    if not folder.is_dir():
        return {}
    if kind == "suites":
        return {p.parent.name: p for p in sorted(folder.glob(f"*/{SUITE_FILE}"))}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in _SUFFIXES and not p.name.startswith(".")}


def list_cards(kind: Kind) -> list[str]:
    """Names of the shipped cards of ``kind``, sorted."""
    return sorted(_shipped(kind))


def find_card(path_or_name: str | os.PathLike, kind: Kind) -> Path:
    """The file of a card: an existing path (a suite's folder too), or a shipped card's name (``"hpsv2.1"``)."""
    path = Path(path_or_name)
    if kind == "suites" and path.is_dir() and (path / SUITE_FILE).is_file():
        return path / SUITE_FILE
    if path.is_file():
        return path
    looks_like_path = path.suffix in _SUFFIXES or len(path.parts) > 1
    shipped = _shipped(kind)
    if not looks_like_path and str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    near = difflib.get_close_matches(str(path_or_name), list(shipped), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    where = "no such file" if looks_like_path else f"no {kind[:-1]} of that name in {_folder(kind)}"
    raise ConfigError(f"{path_or_name}: {where}; {hint}available {kind}: {', '.join(shipped) or '(none)'}")


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what the parser found, and where."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(str(getattr(e, "problem", None) or e).split()) + where


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file, or a ConfigError naming the file (and line)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the card ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a card must be a YAML mapping of keys to values, got {type(data).__name__}")
    return data


def load_card(
    path_or_name: str | os.PathLike,
    model_cls: type[C],
    kind: Kind = "scorers",
    overrides: Sequence[str] = (),
) -> C:
    """Load, override (``["a.b=c", ...]``) and validate one card; every error is a :class:`ConfigError`."""
    path = find_card(path_or_name, kind)
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides, model_cls, where=str(path))
    card = validate(data, model_cls, where=str(path))
    card._source = path
    return card


def validate(data: dict[str, Any], model_cls: type[C], where: str = "card") -> C:
    """``model_cls.model_validate(data)`` with pydantic's errors turned into one ConfigError."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(_describe(err, model_cls) for err in e.errors())
        raise ConfigError(f"{where}: {problems}") from e


def _describe(err: dict[str, Any], model_cls: type[BaseModel]) -> str:
    key, fields = _walk(model_cls, err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'{_nearest(str(err['loc'][-1]), fields)}"
    if err["type"] == "missing":
        return f"missing required key '{key}'"
    message = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:  # a check across fields (model validator)
        return message
    return f"key '{key}': {message} (got {_short(err['input'])})"


def _short(value: Any, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _nearest(key: str, valid: Sequence[str]) -> str:
    """``"; did you mean 'x'? (valid keys: ...)"`` for an unknown ``key`` among ``valid``."""
    if not valid:
        return ""
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    mean = f"; did you mean '{near[0]}'?" if near else ""
    return f"{mean} (valid keys here: {', '.join(sorted(valid))})"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold directly (``M``, ``M | None``, ``Annotated[M, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _step(annotation: Any, part: Any) -> tuple[Any, bool]:
    """Follow one location ``part`` into ``annotation``; returns (next annotation, whether ``part`` is a key)."""
    for model in _models_in(annotation):
        if part in model.model_fields:
            return model.model_fields[part].annotation, True
        if part == model.__name__:  # pydantic names the union member it tried
            return model, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in args:
            nxt, is_key = _step(arg, part)
            if nxt is not None:
                return nxt, is_key
        return None, True
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and isinstance(part, int):
        return (args[0] if args else None), True
    if origin is dict and len(args) == 2:
        return args[1], True
    return None, True


def _walk(model_cls: type[BaseModel], loc: Sequence[Any]) -> tuple[str, list[str]]:
    """The dotted key of a pydantic error location and the valid keys of its parent mapping."""
    parts: list[str] = []
    annotation: Any = model_cls
    for part in loc[:-1]:
        annotation, is_key = _step(annotation, part)
        if is_key:
            parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    parts.append(str(loc[-1]) if loc else "")
    models = _models_in(annotation)
    fields = sorted({name for m in models for name in m.model_fields})
    return ".".join(parts).replace(".[", "["), fields


def _schema_keys(model_cls: type[BaseModel] | None, path: Sequence[str]) -> list[str] | None:
    """Valid keys below a dotted path of a schema, or None where the schema does not say (dicts, Any)."""
    if model_cls is None:
        return None
    annotation: Any = model_cls
    for part in path:
        annotation, _ = _step(annotation, int(part) if part.isdigit() else part)
        if annotation is None:
            return None
    fields = sorted({name for m in _models_in(annotation) for name in m.model_fields})
    return fields or None


def apply_overrides(
    data: dict[str, Any],
    overrides: Sequence[str],
    model_cls: type[BaseModel] | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """A copy of ``data`` with each ``"a.b=c"`` applied; ``c`` is parsed as YAML (``1e-4``, ``[1, 2]``, ``null``).

    A key must exist in ``data`` or, with ``model_cls``, be a field of the schema (any key, below a
    free-form mapping of the schema such as ``dict[str, Any]``, which its own validation checks);
    otherwise a ConfigError names the nearest valid key. List items are addressed by index (``layers.0.dim=8``).
    """
    out = copy.deepcopy(data)
    at = f"{where}: " if where else ""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{at}override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{at}--set {key}: value {text!r} is not valid YAML ({_yaml_problem(e)}); "
                              "quote it or fix the brackets") from None
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{at}--set {key}: '{part}' is no index of a list of {len(node)} items")
                index: Any = int(part)
            elif isinstance(node, dict):
                known = _schema_keys(model_cls, parts[:depth])
                free = model_cls is not None and known is None  # a free-form mapping of the schema (dict[str, Any])
                if part not in node and not free and part not in (known or []):
                    valid = sorted(set(node) | set(known or []))
                    raise ConfigError(f"{at}--set {key}: unknown key '{'.'.join(parts[: depth + 1])}'{_nearest(part, valid)}")
                index = part
            else:
                raise ConfigError(f"{at}--set {key}: '{'.'.join(parts[:depth])}' is a value, not a mapping")
            if last:
                node[index] = value
            else:
                if isinstance(node, dict) and node.get(index) is None:
                    node[index] = {}
                node = node[index]
    return out


__all__ = ["Card", "load_card", "find_card", "read_yaml", "validate", "apply_overrides", "list_cards", "SUITE_FILE"]
