"""The error types of mmalign.

Every error says what went wrong, where (file, key, item index) and what to do. There are few
of them on purpose: catch :class:`MMAlignError` to catch everything the framework raises.
"""

from __future__ import annotations


class MMAlignError(Exception):
    """Base class of every error mmalign raises on purpose."""


class InputError(MMAlignError, ValueError):
    """Media, data or weights that cannot be used: a corrupt file, an empty video, a missing checkpoint."""


class ConfigError(MMAlignError, ValueError):
    """A card, recipe or argument that does not validate: unknown key, bad value, conflicting options."""


class CheckpointError(MMAlignError, RuntimeError):
    """A training run that cannot go on safely: non-finite loss, unreadable or mismatched checkpoint."""


__all__ = ["MMAlignError", "InputError", "ConfigError", "CheckpointError"]
