"""Frozen, self-validating dataclasses that round-trip through plain data (dicts, YAML, JSON).

Every config of modelzip (methods, selectors, training, accelerator specs) derives from
:class:`ConfigBase`. A config is a frozen
dataclass: it never changes after construction, and it is checked at construction, so an invalid
value fails where it was written, with a message naming the field, the value and what is allowed.

Subclasses declare typed fields and, where a number has a range, call :func:`check_range` (or
:func:`check_choice`) from ``validate``. The field types themselves (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``tuple[...]``, ``X | None``) are checked generically, so YAML that says
``sparsity: "high"`` is refused before any method runs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from modelzip.core.errors import ConfigError

C = TypeVar("C", bound="ConfigBase")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "Any"
        return f"list of {inner}"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert YAML forms (list -> tuple)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{where}={value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"{where}={value!r} is not allowed; choose one of {list(get_args(tp))}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}={value!r} must have {len(args)} entries")
        return tuple(
            _coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"{where}=nan is not a number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping) and issubclass(tp, ConfigBase):
            return tp.from_dict(value)
        raise bad
    return value


def check_range(
    config: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse ``config.name`` outside ``[low, high]`` (open ends where asked), naming the range."""
    value = getattr(config, name)
    if value is None:
        return
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ConfigError(
            f"{type(config).__name__}.{name}={value!r} is out of range; allowed {lo}, {hi}"
        )


def check_choice(config: Any, name: str, allowed: tuple[Any, ...]) -> None:
    """Refuse ``config.name`` not among ``allowed``."""
    value = getattr(config, name)
    if value not in allowed:
        raise ConfigError(
            f"{type(config).__name__}.{name}={value!r} is not allowed; "
            f"choose one of {list(allowed)}"
        )


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """A frozen dataclass that checks field types, then calls :meth:`validate`."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(hints[f.name], value, f"{type(self).__name__}.{f.name}")
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Check ranges and relations between fields; raise :class:`ConfigError` if invalid."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) suitable for YAML or JSON."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from plain data; unknown keys are refused with the list of known ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        odd = [k for k in data if not isinstance(k, str)]
        if odd:  # YAML reads unquoted on/off/yes/no/numbers as booleans and numbers (atheris)
            raise ConfigError(
                f"{cls.__name__} field names must be strings, got {odd[0]!r}; known fields: "
                f"{sorted(known)}"
            )
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field {unknown[0]!r}; known fields: {sorted(known)}"
            )
        try:
            return cls(**dict(data))
        except TypeError as e:  # a missing required field
            raise ConfigError(f"{cls.__name__}: {e}") from None

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
