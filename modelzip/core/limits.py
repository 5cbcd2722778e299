"""Bounds on the numbers that files and command lines hand us, checked before any work.

A saved file's layer specs and a model's build arguments are untrusted data: a count of 10⁹
layers, blocks or index bits hangs or allocates gigabytes long before a tensor-size check can see
it. Every such value is checked here against a range chosen by its name, so that one table covers
every layer class and model factory, whatever nesting their specs use. A factory or a layer class
may declare tighter or wider ranges of its own (``bounds=``); the defaults are documented in
RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from typing import Any

from modelzip.core.errors import ConfigError, DataError
from modelzip.core.scoped import scoped

#: Any integer without a rule of its own: no layer dimension in practice comes near 2²⁴ (16.7M).
MAX_DIM = 1 << 24
#: Element counts (non-zeros, kept weights) of one layer.
MAX_ELEMENTS = 1 << 40
#: Output classes of a classifier head (data sets and model arguments alike); ``--max-classes``
#: (:func:`class_limit`) raises it for one command.
MAX_CLASSES = 100_000
#: Strings in specs and build arguments (names, choices).
MAX_STRING = 256

Range = tuple[float, float]


def check_positive_ints(**values: Any) -> None:
    """ValueError naming the first of ``values`` that is not a positive int (the constructor
    arguments of layers and zoo models)."""
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


#: Ranges by the name of the field (the last key on the path to the value).
DEFAULT_BOUNDS: dict[str, Range] = {
    "bits": (0, 32),
    "index_bits": (0, 32),
    "weight_bits": (0, 32),
    "act_bits": (0, 32),
    "n_levels": (0, 1 << 16),
    "num_layers": (1, 256),
    "blocks": (1, 256),
    "depth": (1, 1024),
    "stride": (1, 1 << 16),
    "dilation": (1, 1 << 16),
    "kernel_size": (1, 1 << 16),
    "groups": (1, MAX_DIM),
    "padding": (0, 1 << 16),
    "nnz": (0, MAX_ELEMENTS),
    "kept": (0, MAX_ELEMENTS),
    "dropout": (0.0, 1.0),
    "input_shape": (1, 1 << 16),
    "width": (1, 1 << 14),
    "hidden_size": (1, 1 << 16),
    "embed_dim": (1, 1 << 16),
    "embedding_dim": (1, 1 << 16),
    "vocab_size": (1, 1 << 21),
    "num_embeddings": (1, MAX_DIM),
}


_CLASS_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar(
    "modelzip_max_classes", default=MAX_CLASSES
)


@contextlib.contextmanager
def class_limit(max_classes: int | None) -> Iterator[None]:
    """Within the block, data sets and models may have up to ``max_classes`` classes (None:
    unchanged)."""
    if max_classes is None:
        yield
        return
    with scoped(_CLASS_LIMIT, positive_limit(max_classes)):
        yield


def positive_limit(max_classes: object) -> int:
    """``max_classes`` if it is a positive int; DataError otherwise."""
    if isinstance(max_classes, bool) or not isinstance(max_classes, int) or max_classes < 1:
        raise DataError(f"max_classes must be a positive int, got {max_classes!r}")
    return max_classes


def current_class_limit() -> int:
    """The class bound in force (:data:`MAX_CLASSES` unless :func:`class_limit` changed it)."""
    return _CLASS_LIMIT.get()


def check_bounds(
    data: Any,
    where: str,
    bounds: Mapping[str, Range] | None = None,
    *,
    default: Range = (-MAX_DIM, MAX_DIM),
) -> None:
    """Refuse any number in ``data`` (nested dicts and lists) outside its range.

    The range of a value is ``bounds[name]``, else :data:`DEFAULT_BOUNDS` ``[name]``, else
    ``default`` for integers (floats need only be finite), where ``name`` is the key that holds
    it (for a list, the key that holds the list). Raises :class:`ConfigError` naming ``where``,
    the path, the value and the range.
    """
    table = {**DEFAULT_BOUNDS, "num_classes": (1, current_class_limit()), **(bounds or {})}
    _walk(data, where, "", None, table, default)


def _walk(value: Any, where: str, path: str, name: str | None, table, default) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _walk(item, where, f"{path}.{key}" if path else str(key), str(key), table, default)
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_DIM:
            raise ConfigError(f"{where}: {path} has {len(value):,} items (limit {MAX_DIM:,})")
        for i, item in enumerate(value):
            _walk(item, where, f"{path}[{i}]", name, table, default)
    elif isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ConfigError(
                f"{where}: {path} is a string of {len(value):,} characters (limit {MAX_STRING})"
            )
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {path}={value} is not a finite number")
        if name in table:
            lo, hi = table[name]
        elif isinstance(value, int):
            lo, hi = default
        else:
            return
        if not lo <= value <= hi:
            text = str(value)
            shown = text if len(text) <= 20 else f"{text[:6]}...({len(text)} digits)"
            raise ConfigError(f"{where}: {path}={shown} is out of range; allowed [{lo}, {hi}]")
