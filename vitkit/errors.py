"""Errors meant for people: each names the file or config field, what was found and what was expected.

The CLI prints these as one message and exits with status 2 instead of a stack trace.
"""
from __future__ import annotations


class VitkitError(Exception):
    """Base class of vitkit's user-facing errors."""


class ConfigError(VitkitError, ValueError):
    """A config field (YAML or keyword argument) has a value vitkit cannot use."""


class DatasetNotFoundError(VitkitError, FileNotFoundError):
    """A dataset is not where the config says it is."""


class CorruptImageError(VitkitError, OSError):
    """An image file cannot be decoded."""


class DataError(VitkitError, ValueError):
    """Dataset content is inconsistent (labels out of range, missing files, bad annotations)."""


class CheckpointError(VitkitError, ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def require(ok: bool, field: str, found: object, expected: str) -> None:
    """Raise ConfigError("<field>: found <found>; expected <expected>") unless `ok`: the check every data module
    and task runs on values its types do not rule out (LightningCLI checks types, direct calls do not)."""
    if not ok:
        raise ConfigError(f"{field}: found {found!r}; expected {expected}")
