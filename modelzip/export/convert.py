"""Which compressed layers export, and as what: each layer class declares it.

Every compressed layer class says how it exports in its ``onnx_export`` class attribute
(:class:`~modelzip.core.module.CompressedModule`), one of four treatments:

* ``traced``: its forward is already a chain of plain layers (the factors of SVD, Tucker-2, CP,
  the compact blocks), traced as consecutive ``Conv``/``Gemm``/``MatMul`` nodes;
* ``dense`` or ``dense: why``: its output equals ``to_dense()``'s (masked and sparse layers keep
  their zeros in a dense float weight; fake-quantized weights are dequantized); the reason is
  reported with the export, because the file is then as large as the uncompressed layer's;
* ``converter:NAME``: one of the converters below turns it into exportable modules (int8 layers
  become QDQ/integer ops, :mod:`.qdq`; k-bit and shared weights code tensors, :mod:`.coded`;
  tensor-network layers matmul chains, :mod:`.contraction`);
* ``refused: why``, for layers whose computation has no faithful ONNX form.

A class that declares nothing inherits the refusal: exporting it unchecked could write a file
that computes something else. A new weight format that exports densely or by an existing
converter needs no edit here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modelzip.core.compact_source import compact_source
from modelzip.core.errors import ModelError
from modelzip.core.model_links import unlink
from modelzip.core.module import CompressedModule
from modelzip.export.forms import form_of, mark

Converter = Callable[[Any], nn.Module]


def _factor_pruned(layer: Any) -> nn.Module:
    # The decomposed layer with its masks applied to the factors, then exported as such (a chain
    # of small layers with zeros in their weights).
    inner = copy.deepcopy(layer.inner)
    with torch.no_grad():
        for name, value in layer.masked_factors().items():
            inner.get_parameter(name).copy_(value)
    return exportable(inner)


def _factor_quantized(layer: Any) -> nn.Module:
    # The tensor-network layer on its decoded factors, exported as that layer is (a chain of
    # matmuls): the ONNX file holds the factors as float, not their codes.
    inner = layer.decoded_layer()
    path = export_path(inner)
    if path.startswith("refused: "):
        raise ModelError(
            f"its factors' layer {type(inner).__name__} cannot be exported: "
            f"{path.removeprefix('refused: ')}"
        )
    return mark(exportable(inner), "factors decoded to float, contracted as matmuls")


def converters() -> dict[str, Converter]:
    """The converters a layer class may name in ``onnx_export = "converter:NAME"``."""
    from modelzip.export.coded_layers import quant_format_coded, shared_format_coded
    from modelzip.export.contraction import MatMulContraction
    from modelzip.export.qdq import QDQConv2d, QDQLinear

    return {
        "qdq_linear": QDQLinear,
        "qdq_conv2d": QDQConv2d,
        "matmul_factorized": MatMulContraction,
        "matmul_tt_conv2d": MatMulContraction,
        "factor_pruned": _factor_pruned,
        "factor_quantized": _factor_quantized,
        "coded_quant": quant_format_coded,
        "coded_shared": shared_format_coded,
    }


def export_path(module: nn.Module) -> str:
    """How ``module`` exports: ``"traced"``, ``"dense"``, ``"converted"`` or ``"refused: why"``."""
    declared = getattr(type(module), "onnx_export", "")
    if declared == "traced":
        return declared
    if declared == "dense" or declared.startswith("dense: "):
        return "dense"
    if declared.startswith("converter:"):
        name = declared.removeprefix("converter:")
        if name in converters():
            return "converted"
        return f"refused: its class names converter {name!r}, which modelzip.export does not have"
    if declared.startswith("refused: "):
        return declared
    return "refused: modelzip has no ONNX export path for this layer class"


def dense_reason(module: nn.Module) -> str:
    """Why a ``dense`` layer is written as a float weight (its class's ``dense: why``)."""
    declared = getattr(type(module), "onnx_export", "")
    return declared.removeprefix("dense: ") if declared.startswith("dense: ") else "declared dense"


def _convert(module: nn.Module, name: str, forms: dict[str, str]) -> nn.Module | None:
    """The export form of the compressed layer ``name`` (None: ``traced``, export it as it is);
    how it is written goes to ``forms[name]``."""
    path = export_path(module)
    if path == "traced":
        forms[name] = "traced: its own chain of small layers"
        return None
    if path == "dense":
        forms[name] = f"dense float: {dense_reason(module)}"
        return module.to_dense()  # type: ignore[operator]
    if path == "converted":
        converter = type(module).onnx_export.removeprefix("converter:")  # type: ignore[attr-defined]
        new = converters()[converter](module)
        forms[name] = form_of(new, f"converted ({converter})")
        return new
    raise ModelError(
        f"layer {name!r} ({type(module).__name__}) cannot be exported to ONNX: "
        f"{path.removeprefix('refused: ')}"
    )


def exportable(model: nn.Module, forms: dict[str, str] | None = None) -> nn.Module:
    """A copy of ``model`` in which every compressed layer is replaced by its export form;
    ``forms`` (if given) receives, per compressed layer name, how it is written.

    Raises
    ------
    ModelError
        Naming the first layer that cannot be exported and why.
    """
    forms = {} if forms is None else forms
    # A linked deployed model (int8 chain, sparse runs) exports as its eager model: the links
    # are run-time fusions of layers that each export on their own.
    work = unlink(copy.deepcopy(model)).eval()
    replaced: list[str] = []
    for name, module in list(work.named_modules()):
        if any(name.startswith(p + ".") for p in replaced):
            continue
        source = compact_source(module)
        if source is not None:
            # A deployed layer exports as the compact layer it was built from: its executable
            # form (a dense product, a two-GEMM cut) would make the file as large as the model.
            module = source.layer()
            if name:
                work.set_submodule(name, module)
            else:
                work = module
        if not isinstance(module, CompressedModule):
            continue
        replaced.append(name)
        new = _convert(module, name, forms)
        if new is None:
            continue
        if not name:  # the model itself is one compressed layer
            return new
        work.set_submodule(name, new)
    return work
