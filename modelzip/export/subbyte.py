"""Store the codes marked in a traced graph in their own width: ``UINT2``/``UINT4`` initializers.

:mod:`.coded` traces codes as uint8 ``DequantizeLinear`` inputs carrying a ``modelzip_bits``
attribute (torch has no 4-bit dtype). Here the attribute is removed, the graph is raised to the
opset that reads narrow codes (21 for 4 bits, 25 for 2 bits) by onnx's version converter, and
each marked input is rewritten as a fresh initializer of the narrow type (ONNX packs two 4-bit
or four 2-bit values per byte). Below opset 21 the codes stay uint8, still 4× below float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MARK = "modelzip_bits"
#: The first opset whose DequantizeLinear reads uint4 (21) and uint2 (25) codes.
UINT4_OPSET, UINT2_OPSET = 21, 25


def _narrowest(bits: int, opset: int) -> tuple[Any, int]:
    """``(ml_dtypes type, IR version it needs)`` for ``bits``-bit codes at ``opset``; ``None``
    when uint8, as traced, is the narrowest."""
    import ml_dtypes  # onnx's own dependency for its narrow types

    if bits <= 2 and opset >= UINT2_OPSET:
        return ml_dtypes.uint2, 11
    if bits <= 4 and opset >= UINT4_OPSET:
        return ml_dtypes.uint4, 10
    return None, 0


def marked_bits(model: Any) -> list[int]:
    """The code widths marked in ``model``'s graph (empty: no coded weights)."""
    return [
        a.i for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
        if a.name == MARK
    ]  # fmt: skip


def opset_for(bits: list[int], requested: int | None, default: int) -> int:
    """The opset to write: the requested one, or by default the lowest that stores the codes
    of ``bits`` narrowest (``default`` when there are none)."""
    if requested is not None:
        return requested
    if not bits:
        return default
    return UINT2_OPSET if min(bits) <= 2 else UINT4_OPSET if min(bits) <= 4 else default


def _value(graph: Any, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            return numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Identity" and name in node.output:  # torch's deduplicated buffers
            return _value(graph, node.input[0])
    raise ValueError(f"marked code tensor {name!r} is neither an initializer nor a Constant")


def store_narrow_codes(model: Any, opset: int) -> Any:
    """``model`` (a traced ``ModelProto``) at ``opset`` with its marked codes in narrow types."""
    from onnx import numpy_helper, version_converter

    graph = model.graph
    widths: dict[str, int] = {}  # by output name, which the version converter keeps
    for node in graph.node:
        bits = [a for a in node.attribute if a.name == MARK]
        if node.op_type == "DequantizeLinear" and bits:
            widths[node.output[0]] = bits[0].i
            node.attribute.remove(bits[0])
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset != current:
        model = version_converter.convert_version(model, opset)
        graph = model.graph
    marked = [(n, widths[n.output[0]]) for n in graph.node if n.output[0] in widths]
    for index, (node, bits) in enumerate(marked):
        narrow, ir_version = _narrowest(bits, opset)
        if narrow is None:
            continue
        for slot in (0, 2):  # the codes and their zero point share the type
            values = _value(graph, node.input[slot])
            name = f"modelzip_codes_{index}_{slot}"
            # from_array writes ml_dtypes' narrow ints packed into raw bytes (two or four a byte).
            graph.initializer.append(numpy_helper.from_array(values.astype(narrow), name))
            node.input[slot] = name
        model.ir_version = max(model.ir_version, ir_version)
    _drop_unused(graph)
    return model


def _drop_unused(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    for node in list(graph.node):
        if node.op_type == "Constant" and not set(node.output) & used:
            graph.node.remove(node)
