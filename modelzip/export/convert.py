"""Which compressed layers export, and as what: the one table of ONNX export paths.

Each compressed layer class gets one of four treatments:

* ``traced``: its forward is already a chain of plain layers (the factors of SVD, Tucker-2, CP,
  the compact blocks), traced as consecutive ``Conv``/``Gemm``/``MatMul`` nodes;
* ``dense``: its output equals ``to_dense()``'s (masked and sparse layers keep their zeros in a
  dense weight; multi-bit and fake-quantized weights are dequantized);
* a converter: int8 layers become QDQ/integer ops (:mod:`.qdq`), tensor-network layers become
  matmul chains (:mod:`.contraction`);
* refused, with the reason, for layers whose computation has no faithful ONNX form.

A compressed layer class missing from the table is refused too: exporting it unchecked could
write a file that computes something else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import CompressedModule

Converter = Callable[[Any], nn.Module]

_TRACED = (
    "modelzip.decompose.lowrank.LowRankLinear",
    "modelzip.decompose.lowrank.ChannelLowRankConv2d",
    "modelzip.decompose.lowrank.SpatialLowRankConv2d",
    "modelzip.decompose.cp.CPConv2d",
    "modelzip.decompose.tucker.Tucker2Conv2d",
    "modelzip.compact.layers.DepthwiseSeparableConv2d",
    "modelzip.compact.layers.GroupConv2d",
    "modelzip.compact.layers.BottleneckConv2d",
)
_DENSE = (
    "modelzip.prune.masked.MaskedLinear",
    "modelzip.prune.masked.MaskedConv2d",
    "modelzip.prune.sparse_exec.SparseLinear",
    "modelzip.prune.sparse_exec.SparseConv2d",
    "modelzip.kernels.sparse_layers.SparseLinear",
    "modelzip.kernels.sparse_layers.SparseConv2d",
    "modelzip.quantize.layers.QuantLinear",
    "modelzip.quantize.layers.QuantConv2d",
    "modelzip.quantize.fake.FakeQuantLinear",
    "modelzip.quantize.fake.FakeQuantConv2d",
    # joint methods: shared (clustered, Huffman-coded) and sparse-quantized weights, dequantized
    "modelzip.joint.weight_sharing.SharedLinear",
    "modelzip.joint.weight_sharing.SharedConv2d",
    "modelzip.joint.coded_format.HuffmanLinear",
    "modelzip.joint.coded_format.HuffmanConv2d",
    "modelzip.joint.quant_aware_prune.QuantAwareMaskedLinear",
    "modelzip.joint.quant_aware_prune.QuantAwareMaskedConv2d",
    "modelzip.joint.sparse_quant.SparseQuantLinear",
    "modelzip.joint.sparse_quant.SparseQuantConv2d",
)
_REFUSED = {
    "modelzip.decompose.recurrent.DecomposedRNN": (
        "its recurrence is a Python loop over time steps; tracing would fix the sequence length"
    ),
    "modelzip.prune.rnn.PrunedRNN": (
        "its recurrence is a Python loop over time steps; tracing would fix the sequence length"
    ),
    "modelzip.decompose.tt_embedding.TTEmbedding": (
        "its lookup reshapes by the number of ids, which tracing would fix"
    ),
    "modelzip.kernels.layers.BinaryLinear": (
        "it runs a bit-packed XNOR/popcount kernel that ONNX has no operator for; export the model "
        "before converting it to kernel layers"
    ),
    "modelzip.kernels.layers.BinaryConv2d": (
        "it runs a bit-packed XNOR/popcount kernel that ONNX has no operator for; export the model "
        "before converting it to kernel layers"
    ),
}


def _converters() -> dict[str, Converter]:
    from modelzip.export.contraction import MatMulFactorizedLinear, MatMulTTConv2d
    from modelzip.export.qdq import QDQConv2d, QDQLinear

    def dense(layer: Any) -> nn.Module:
        return layer.to_dense()

    def factor_pruned(layer: Any) -> nn.Module:
        # The decomposed layer with its masks applied to the factors, then exported as such
        # (a chain of small layers with zeros in their weights).
        inner = copy.deepcopy(layer.inner)
        with torch.no_grad():
            for name, value in layer.masked_factors().items():
                inner.get_parameter(name).copy_(value)
        return exportable(inner)

    table: dict[str, Converter] = {key: dense for key in _DENSE}
    table["modelzip.joint.factor_prune.FactorPruned"] = factor_pruned
    table.update(
        {
            "modelzip.quantize.int8.Int8Linear": QDQLinear,
            "modelzip.quantize.static_int8.StaticInt8Linear": QDQLinear,
            "modelzip.quantize.int8.Int8Conv2d": QDQConv2d,
            "modelzip.quantize.static_int8.StaticInt8Conv2d": QDQConv2d,
            "modelzip.decompose.tt.TTLinear": MatMulFactorizedLinear,
            "modelzip.decompose.ht.HTLinear": MatMulFactorizedLinear,
            "modelzip.decompose.tucker.TuckerLinear": MatMulFactorizedLinear,
            "modelzip.decompose.tt.TTConv2d": MatMulTTConv2d,
        }
    )
    return table


def _key(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def export_path(module: nn.Module) -> str:
    """How ``module`` exports: ``"traced"``, ``"dense"``, ``"converted"`` or ``"refused: why"``."""
    key = _key(module)
    if key in _TRACED:
        return "traced"
    if key in _DENSE:
        return "dense"
    if key in _converters():
        return "converted"
    return "refused: " + _REFUSED.get(key, "modelzip has no ONNX export path for this layer class")


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every compressed layer is replaced by its export form.

    Raises
    ------
    ModelError
        Naming the first layer that cannot be exported and why.
    """
    work = copy.deepcopy(model).eval()
    converters = _converters()
    replaced: list[str] = []
    for name, module in list(work.named_modules()):
        if not isinstance(module, CompressedModule) or any(
            name.startswith(p + ".") for p in replaced
        ):
            continue
        key = _key(module)
        replaced.append(name)
        if key in _TRACED:
            continue
        if key in converters:
            if not name:  # the model itself is one compressed layer
                return converters[key](module)
            work.set_submodule(name, converters[key](module))
            continue
        path = export_path(module)
        raise ModelError(
            f"layer {name!r} ({type(module).__name__}) cannot be exported to ONNX: "
            f"{path.removeprefix('refused: ')}"
        )
    return work
