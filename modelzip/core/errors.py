"""Errors that modelzip raises on purpose.

Every error a user can cause (a bad config, a missing file, a malformed data set) is a
:class:`ModelzipError`, so the CLI can print its message and exit non-zero without a traceback.
"""

from __future__ import annotations


class ModelzipError(Exception):
    """Base class of every error modelzip raises for bad input."""


class ConfigError(ModelzipError, ValueError):
    """An invalid config, recipe or spec; the message names field, value and allowed range."""


class DataError(ModelzipError):
    """A data set is missing, malformed or of the wrong shape."""


class ModelError(ModelzipError):
    """A model cannot be built, loaded or compressed (unknown name, NaN weights, bad file)."""


class UnknownNameError(ModelzipError, KeyError):
    """A name (method, model, data set, preset) is not in its registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: list[str]) -> UnknownNameError:
    """Build the error for a name missing from a registry, listing what exists."""
    close = [k for k in known if name.lower() in k.lower() or k.lower() in name.lower()]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}")
