"""Which recipe steps may follow which: every method says what kind of weights it applies to and
what kind it leaves, and a recipe is refused at construction when a step would meet weights it
cannot take.

The rule behind it: any method applies to the parameters a compressed layer holds. A decomposed
or compact layer holds plain float layers (its :attr:`~modelzip.core.module.CompressedModule.
compressible_parts`), which a later step selects and compresses like any layer; a pruned layer
holds kept weights under a mask, which a later quantizer quantizes with the mask kept (where a
joint format exists); quantized codes are final. A method declares this once, on its
registration (``register_method(..., composition=Composition(takes=..., gives=...))``);
there is no table of pairs.

Kinds of weight:

``dense``
    plain float layers (the model as trained, or after channel pruning or BN folding).
``parts``
    a layer restructured into smaller plain float layers (decomposition, compact blocks).
``kept``
    kept weights under a pruning mask.
``codes``
    quantized codes or shared centroids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

KINDS: dict[str, str] = {
    "dense": "plain float layers",
    "parts": "layers restructured into smaller float layers",
    "kept": "pruned layers (kept weights under a mask)",
    "codes": "quantized codes or shared centroids",
}


@dataclasses.dataclass(frozen=True)
class Composition:
    """What kind of weights a method applies to (``takes``) and leaves (``gives``); see
    :data:`KINDS`. ``why`` gives, per kind it does not take, the reason in the method's own
    terms (``{"kept": "binary levels ±α have no zero, so pruned weights would come back"}``).
    ``passes`` are kinds it does not take but meets without refusing the recipe: it leaves
    those layers alone, with the reason in the Report, and applies to the others (``[prune some
    layers, int8]`` quantizes the layers pruning left dense).
    """

    takes: frozenset[str]
    gives: str
    why: Mapping[str, str] = dataclasses.field(default_factory=dict)
    passes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "takes", frozenset(self.takes))
        object.__setattr__(self, "passes", frozenset(self.passes))
        kinds = set(self.takes) | {self.gives} | set(self.why) | set(self.passes)
        unknown = sorted(kinds - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kinds of weight {unknown}; known: {sorted(KINDS)}")

    def reason(self, method: str, kind: str) -> str:
        """Why ``method`` cannot take weights of ``kind``."""
        if kind in self.why:
            return self.why[kind]
        took = ", ".join(KINDS[k] for k in sorted(self.takes))
        return f"{method} applies to {took}"


#: Shared declarations: a restructuring method (decomposition, compact block), a quantizer of
#: float weights, and an element-wise pruning method.
RESTRUCTURES = Composition(
    takes={"dense"},
    gives="parts",
    why={
        "parts": "the layer is already restructured; restructuring its pieces again compounds "
        "the approximation (restructure each layer once; select other layers for a second)",
        "kept": "restructuring a pruned layer fills its pruned weights back in (dense factors)",
        "codes": "restructuring quantized codes would leave float weights again",
    },
)
QUANTIZES = Composition(
    takes={"dense", "parts"},
    gives="codes",
    why={"codes": "the weights are already quantized codes"},
)
PRUNES = Composition(
    takes={"dense", "parts", "kept"},
    gives="kept",
    why={"codes": "pruning quantized codes would change levels the quantizer fitted"},
)


def selections_overlap(first: Any, second: Any) -> bool:
    """Whether two configs' selections may pick the same layers for a refusal to be certain:
    their types meet (no types: any), they do not each name their own different layers, and
    the later step is not "the rest" after an earlier one that named its layers (mixed
    precision: ``[quantize_weights bits=8 on fc1, quantize_weights bits=2]``): the later step
    then skips what the earlier one changed, with the reason in the Report."""
    a, b = first.select, second.select
    if a.names and not b.names:
        return False
    types_a = set(a.types or first.default_types)
    types_b = set(b.types or second.default_types)
    if types_a and types_b and not types_a & types_b:
        return False
    return not (a.names and b.names and not set(a.names) & set(b.names))
