"""Which layers a method applies to: module types, name patterns and exclusions.

A :class:`Select` is part of every method config (``select:`` in a recipe step). Names are the
fully-qualified module names of ``model.named_modules()`` (``features.0``, ``fc3``) and are matched
with :func:`re.fullmatch`, so ``fc3`` means exactly that layer and ``features\\..*`` a whole block.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from torch import nn

from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase


@dataclasses.dataclass(frozen=True)
class Select(ConfigBase):
    """Layer selector.

    Parameters
    ----------
    types:
        Class names of the modules to include (``Linear``, ``Conv2d``, ``LSTM``); empty means the
        method's own default types. ``Linear`` matches every Linear-like layer (subclasses of
        ``nn.Linear`` and GPT-2's transposed-weight ``Conv1D``, see
        :mod:`modelzip.core.linear_like`).
    names:
        Regular expressions; when given, a layer must fully match one of them.
    exclude:
        Regular expressions; a layer fully matching any of them is left alone.
    """

    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        for field in ("names", "exclude"):
            for pattern in getattr(self, field):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(
                        f"Select.{field} has an invalid regular expression {pattern!r}: {e}"
                    ) from None

    def matches(self, name: str, module: nn.Module, default_types: tuple[str, ...] = ()) -> bool:
        """Whether ``module`` (named ``name``) is selected."""
        from modelzip.core.linear_like import layer_kinds

        types = self.types or default_types
        kinds = layer_kinds(module)
        if types and not kinds.intersection(types):
            return False
        if self.names and not any(re.fullmatch(p, name) for p in self.names):
            return False
        return not any(re.fullmatch(p, name) for p in self.exclude)

    def select(
        self, model: nn.Module, default_types: tuple[str, ...] = ()
    ) -> Iterator[tuple[str, nn.Module]]:
        """The selected ``(name, module)`` pairs of ``model``, in definition order.

        A selected module's own children are not visited again: replacing a layer replaces its
        whole subtree. Nor are the children of a compressed layer (a decomposed layer's factor
        convs, say): a later step meets the compressed layer itself and refuses it with a reason,
        instead of replacing a factor under a parent that expects a plain layer there.
        """
        from modelzip.core.module import CompressedModule

        closed: list[str] = []
        for name, module in model.named_modules():
            if not name or any(name.startswith(t + ".") for t in closed):
                continue
            if self.matches(name, module, default_types):
                closed.append(name)
                yield name, module
            elif isinstance(module, CompressedModule) and module.leaf:
                closed.append(name)
