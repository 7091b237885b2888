"""One registry shape for every kind of named thing (generator families, scorer builders, benchmark
dimensions and backbones), after timm's ``register_model`` / ``list_models``.

A :class:`Registry` maps names to objects (classes or builder functions). ``@REG.register("name")``
adds one; ``REG.get("name")`` returns it or raises a :class:`~mmalign.errors.ConfigError` that names
the nearest registered name; ``REG.names("hps*")`` lists names with a wildcard filter, in natural
sort order. Registering a name twice is an error, so two modules can never silently shadow each other.

Code that lives outside the generic layers (the synthetic world, a user's package) plugs in through
:func:`import_plugin`: a card or suite file names a module (``plugin: mmalign.synth.scorer``) that
registers its entries when imported.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from typing import Callable, Generic, Iterator, TypeVar

from mmalign.errors import ConfigError

T = TypeVar("T")


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is used in error messages: "scorer family", "dimension")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` on a class or function adds it under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ConfigError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r}); "
                                  "give one of them another name")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a ConfigError naming the nearest names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            near = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; {hint}known: {', '.join(self.names()) or '(none)'}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the wildcard ``pattern``, in natural sort order."""
        return sorted((n for n in self._entries if fnmatch.fnmatchcase(n, pattern)), key=_natural_key)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def import_plugin(module: str, where: str) -> None:
    """Import ``module`` (which registers entries as a side effect); ``where`` names the file that asked."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{where}: plugin module {module!r} cannot be imported ({e}); "
                          "install the package that provides it or fix the name") from e


__all__ = ["Registry", "import_plugin"]
