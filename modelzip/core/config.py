"""Method configs: what a recipe step says, checked at construction, round-tripping through YAML.

A method config is a :class:`~modelzip.core.frozen.ConfigBase` with a registry name
(``method``) and a layer selector (``select``). See :mod:`modelzip.core.frozen` for the
validation rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase, check_choice, check_range
from modelzip.core.selection import Select

__all__ = ["ConfigBase", "MethodConfig", "check_choice", "check_range", "load_yaml"]

M = TypeVar("M", bound="MethodConfig")


@dataclasses.dataclass(frozen=True)
class MethodConfig(ConfigBase):
    """Base of every compression method's config.

    ``method`` (a class variable) is the registry name used in recipe files. ``select`` chooses the
    layers the method applies to; a subclass sets ``default_types`` to the layer types it handles.
    """

    method: ClassVar[str] = ""
    #: Whether the method compresses an ``nn.Embedding`` as the Linear its table is laid out as
    #: (:mod:`modelzip.core.embedding`); its handler then sees that Linear.
    embeddings_as_tables: ClassVar[bool] = False
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d")
    select: Select = dataclasses.field(default_factory=Select)

    def prerequisites(self) -> tuple[MethodConfig, ...]:
        """Steps ``compress`` runs on the model just before this one (static int8 folds
        BatchNorm first, as int8 engines do); a prerequisite that cannot apply is skipped with
        its reason."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        select = data.pop("select")
        out: dict[str, Any] = {"method": self.method, **data}
        if self.select != Select():
            out["select"] = select
        return out

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any]) -> M:
        data = dict(data)
        name = data.pop("method", cls.method)  # type: ignore[attr-defined]
        if name != cls.method:  # type: ignore[attr-defined]
            raise ConfigError(f"{cls.__name__} is method {cls.method!r}, not {name!r}")  # type: ignore[attr-defined]
        if "select" in data and not isinstance(data["select"], Select):
            data["select"] = Select.from_dict(data["select"] or {})
        return super().from_dict(data)


#: Recipes and accelerator specs are a few kilobytes; a bigger file is refused unread.
MAX_YAML_BYTES = 1 << 20
#: Nesting deeper than this is no recipe or spec (and deep nesting exhausts Python's stack).
MAX_YAML_DEPTH = 32


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that also refuses aliases, deep nesting and
    duplicate keys.

    Aliases are refused because ``*a`` repeated inside anchored lists expands exponentially when
    the data is walked (the "billion laughs" document); no recipe or spec needs them. A key given
    twice in one mapping is refused rather than letting the last one win silently (YAML 1.2 says
    keys are unique; PyYAML keeps the last).
    """

    _depth = 0

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise ConfigError(
                            f"duplicate key {str(key)[:80]!r} on line {line} "
                            f"(first on line {seen[key]})"
                        )
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML aliases (*name) are not supported (line {mark.line + 1})")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely (no arbitrary objects, aliases, huge or deeply nested documents),
    with a clear error on bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path} is {size:,} bytes; YAML configs are limited to 1 MiB")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=_LimitedLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts (4,300)
        raise ConfigError(f"{path}: {str(e)[:200]}") from None
