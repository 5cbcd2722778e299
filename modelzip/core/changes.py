"""The record of one compression run: which layers a method changed, and which it left alone.

These live in core (not in :mod:`modelzip.report`, which re-exports them) because the
:class:`~modelzip.core.context.Context` that records them is core, and core imports nothing above
it.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from modelzip.core.counting import count_params, module_bytes


@dataclasses.dataclass
class LayerChange:
    """One layer replaced by a method."""

    name: str
    method: str
    before: str  # module type before
    after: str  # module type after
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    note: str = ""

    @property
    def compression(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else float("inf")


@dataclasses.dataclass
class SkippedLayer:
    """A selected layer a method left alone, and why."""

    name: str
    method: str
    reason: str


@dataclasses.dataclass(frozen=True)
class LayerSize:
    """A layer's type, parameters and bytes, taken before a method changes it in place.

    A handler that edits a layer object in place (re-pruning an already masked layer) has no
    untouched "before" module left to measure afterwards, so it measures one of these first.
    """

    kind: str
    params: int
    bytes: int

    @classmethod
    def of(cls, module: nn.Module) -> LayerSize:
        return cls(type(module).__name__, count_params(module), module_bytes(module))
