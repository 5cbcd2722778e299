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
        whole subtree. A compressed layer is met whole, with two exceptions that make recipe
        steps compose: a layer that declares :attr:`~modelzip.core.module.CompressedModule.
        compressible_parts` (a decomposed conv's factor convs, a compact block's convs) is
        entered, and those parts are selected like any layer (``conv1.core``), unless the types
        name the compressed class itself (``decompose_prune`` takes ``Tucker2Conv2d`` whole).
        Its other children, and every child of other compressed layers, are never visited: a
        later step meets such a layer itself and refuses it with a reason.
        """
        # A module held under several names is visited once, under its first (as
        # ``named_modules`` does).
        yield from self._select(model, "", default_types, set())

    def _select(
        self, module: nn.Module, prefix: str, default_types: tuple[str, ...], seen: set[int]
    ) -> Iterator[tuple[str, nn.Module]]:
        from modelzip.core.module import CompressedModule

        for child_name, child in module.named_children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            name = f"{prefix}{child_name}"
            composed = isinstance(child, CompressedModule) and child.leaf
            named_whole = type(child).__name__ in (self.types or default_types)
            if composed and child.compressible_parts and not named_whole:
                for part in child.compressible_parts:
                    sub = getattr(child, part, None)
                    if isinstance(sub, nn.Module) and id(sub) not in seen:
                        seen.add(id(sub))
                        yield from self._select_one(sub, f"{name}.{part}", default_types, seen)
                continue
            yield from self._select_one(child, name, default_types, seen)

    def _select_one(
        self, module: nn.Module, name: str, default_types: tuple[str, ...], seen: set[int]
    ) -> Iterator[tuple[str, nn.Module]]:
        from modelzip.core.module import CompressedModule

        if self.matches(name, module, default_types):
            yield name, module
        elif not (isinstance(module, CompressedModule) and module.leaf):
            yield from self._select(module, name + ".", default_types, seen)
