"""What :func:`~modelzip.deploy.materialize` reports, and how close a deployed form must stay.

:class:`MaterializeReport` holds one :class:`LayerMaterialization` per layer and the whole-model
choices; :data:`TOLERANCE` and :func:`rel_error` are the check every replacement passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

# Relative tolerance (to the output's largest magnitude) per kind of kernel: integer kernels are
# exact, float kernels reorder sums, dynamic int8 quantizes the activations to 8 (7) bits.
TOLERANCE = {"exact": 1e-5, "float": 1e-4, "int8": 5e-2, "dense": 1e-5}


@dataclasses.dataclass
class LayerMaterialization:
    """What :func:`~modelzip.deploy.materialize` did with one layer."""

    name: str
    before: str
    after: str
    kernel: str
    reason: str
    max_rel_error: float | None = None
    speedup: float | None = None
    #: The chosen executable form's kind (``"float:CSR"``, ``"dense"`` ...), "" when unchanged.
    form: str = ""


@dataclasses.dataclass
class MaterializeReport:
    """Per-layer actions and the model-level check (``max_rel_error`` on the sample)."""

    layers: list[LayerMaterialization]
    max_rel_error: float | None = None
    layout: str = "contiguous"
    layout_reason: str = "not measured"
    #: Static int8 layers and adds passing uint8 on (:mod:`modelzip.quantize.int8_chain`).
    int8_links: int = 0
    int8_chain: str = ""
    #: Runs of sparse linears run as one call (:mod:`modelzip.kernels.sparse_chain`).
    sparse_chain: str = ""
    #: XNOR convolutions reading the pool and hardtanh before them
    #: (:mod:`modelzip.kernels.xnor_inputs`).
    xnor_inputs: str = ""
    #: ReLUs run in the native dynamic int8 linears before them
    #: (:mod:`modelzip.kernels.int8_dynamic_runs`).
    int8_runs: str = ""
    #: The whole-model candidate kept (``"per-layer"``, ``"static int8"``, ``"dense"``) and each
    #: candidate's median milliseconds on the sample (in its faster layout); empty when there was
    #: one candidate only.
    model_choice: str = ""
    model_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Whether onnxruntime runs the whole model (:mod:`modelzip.deploy.runtime_choice`), with
    #: the times measured, or why not; empty when it was not a candidate.
    onnxruntime: str = ""
    #: A line on the deployment as a whole: why nothing was deployed (a model off the CPU), or
    #: which whole-model candidate won and the int8 chain (what a Report's ``deploy_note`` shows).
    note: str = ""

    def rows(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(layer) for layer in self.layers]

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'before':<14} {'after':<20} {'speedup':>8} {'rel.err':>9}  why"]
        for r in self.layers:
            sp = f"{r.speedup:.2f}×" if r.speedup is not None else "-"
            err = f"{r.max_rel_error:.1e}" if r.max_rel_error is not None else "-"
            lines.append(f"{r.name:<24} {r.before:<14} {r.after:<20} {sp:>8} {err:>9}  {r.reason}")
        lines.append(f"memory layout: {self.layout} ({self.layout_reason})")
        if self.int8_chain and not self.model_choice:
            lines.append(f"int8 chain: {self.int8_chain}")
        if self.sparse_chain:
            lines.append(f"sparse chain: {self.sparse_chain}")
        if self.xnor_inputs:
            lines.append(f"XNOR inputs: {self.xnor_inputs}")
        if self.int8_runs:
            lines.append(f"int8 linears: {self.int8_runs}")
        if self.note:
            lines.append(self.note)
        if self.max_rel_error is not None:
            lines.append(f"model output: max relative error {self.max_rel_error:.2e}")
        return "\n".join(lines)


def rel_error(y: Any, ref: Any) -> float:
    """Largest absolute difference over the largest magnitude of ``ref``; outputs may be nested
    tuples (an RNN's ``(output, (h, c))``), compared leaf by leaf."""
    ys, refs = tree_leaves(y), tree_leaves(ref)
    if len(ys) != len(refs):
        return float("inf")
    worst = 0.0
    for a, b in zip(ys, refs, strict=True):
        if not isinstance(b, torch.Tensor) or b.numel() == 0:
            continue
        scale = float(b.detach().abs().max()) or 1.0
        worst = max(worst, float((a.detach().float() - b.detach().float()).abs().max()) / scale)
    return worst
