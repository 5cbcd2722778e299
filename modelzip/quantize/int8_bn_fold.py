"""BatchNorms and ReLUs folded into the static int8 layers before them, for the int8 chain.

A conv whose weights were quantized before its BatchNorm was folded (k-bit and ternary layers
deployed as static int8, :mod:`modelzip.quantize.static_codes`) is followed by a float BN, which
no uint8 tensor passes: the chain (:mod:`modelzip.quantize.int8_chain`) would stop at every
layer. In eval the BN is a per-channel map ``y·mul + add``; folded into the engine's per-channel
scales and bias it leaves the int8 codes as they are. The fold is a plain attribute of the conv
(:data:`~modelzip.kernels.int8.FOLD_ATTR`), set only in the traced graph the chain runs (the BN
node is dropped there); the eager model keeps its BN and :func:`unfold` clears the attribute.

A ReLU after a static int8 layer is a pass over the whole activation, and after a chained layer
one over uint8 codes (clamping them at the zero point); the engine's ``linear_relu`` and
``conv2d_relu`` do that clamp in their requantization, as PyTorch's FX ``convert`` fuses them
(:func:`fuse_relus`, :data:`~modelzip.kernels.int8.RELU_ATTR`, the same way as the BN fold).

A model that normalizes its input (``(x - mean) / std``, the zoo's ``Normalize``) passes the
image twice through float before the first conv quantizes it; the native first-layer kernel
quantizes as ``round(x·mul + add)`` anyway, so the normalization folds into its ``mul`` and
``add`` (:func:`fold_input_affines`, :data:`~modelzip.kernels.int8.INPUT_AFFINE_ATTR`): on the
small ResNet at batch 64 its two passes took 0.16 ms of 3.9.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from modelzip.core.model_links import constant_affine, is_relu
from modelzip.kernels.int8 import ENGINE_ATTR, FOLD_ATTR, INPUT_AFFINE_ATTR, RELU_ATTR, qparams

__all__ = ["fold_batchnorms", "fold_input_affines", "fuse_relus", "is_relu", "unfold"]


def _bn_map(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    mul = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
    if bn.weight is not None:
        mul = mul * bn.weight.detach().float()
    add = -bn.running_mean.detach().float() * mul
    if bn.bias is not None:
        add = add + bn.bias.detach().float()
    return mul, add


def _out_grid(layer: nn.Module, mul: torch.Tensor, add: torch.Tensor) -> tuple[float, int]:
    """A grid for the folded output when no reader gives one: the calibrated output range
    through the map, per channel, widened to cover every channel (coarse, never clipping more
    than the calibrated range did)."""
    scale, zero = float(layer.out_scale), int(layer.out_zero)  # type: ignore[arg-type]
    lo, hi = -zero * scale, (255 - zero) * scale
    ends = torch.stack([lo * mul + add, hi * mul + add])
    return qparams(float(ends.min()), float(ends.max()))


def fold_batchnorms(
    graph: fx.Graph, modules: dict[str, nn.Module], is_static: object, calls: dict[str, int]
) -> int:
    """Fold each eval ``BatchNorm2d`` node whose input is only the output of a static int8 conv
    (called once) into that conv, and drop the node from ``graph``. Returns how many."""
    folded = 0
    for node in list(graph.nodes):
        bn = modules.get(str(node.target)) if node.op == "call_module" else None
        if type(bn) is not nn.BatchNorm2d or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = modules.get(str(src.target))
        if not is_static(conv) or calls.get(str(src.target), 0) != 1:  # type: ignore[operator]
            continue
        if not isinstance(conv, nn.Module) or getattr(conv, "codes", None) is None:
            continue
        if conv.codes.dim() != 4 or conv.codes.shape[0] != bn.num_features:
            continue
        fold = _bn_map(bn)
        if fold is None:
            continue
        conv.__dict__[FOLD_ATTR] = (*fold, _out_grid(conv, *fold))
        node.replace_all_uses_with(src)
        graph.erase_node(node)
        folded += 1
    return folded


def _is_identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    module = modules.get(str(node.target)) if node.op == "call_module" else None
    return isinstance(module, nn.Identity) and len(node.args) == 1 and not node.kwargs


def fuse_relus(
    graph: fx.Graph, modules: dict[str, nn.Module], is_static: object, calls: dict[str, int]
) -> int:
    """Fuse each ReLU node whose input is only the output of a static int8 layer (called once)
    into that layer, and drop the node from ``graph``. Returns how many."""
    fused = 0
    for node in list(graph.nodes):
        if not is_relu(node, modules) or len(node.args) != 1:
            continue
        src = into = node.args[0]
        while isinstance(src, fx.Node) and len(src.users) == 1 and _is_identity(src, modules):
            src = src.args[0]  # a BN the model replaced by Identity (a folded BN) and the like
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer = modules.get(str(src.target))
        if not is_static(layer) or calls.get(str(src.target), 0) != 1:  # type: ignore[operator]
            continue
        layer.__dict__[RELU_ATTR] = True  # type: ignore[union-attr]
        node.replace_all_uses_with(into)  # type: ignore[arg-type]
        graph.erase_node(node)
        fused += 1
    return fused


def fold_input_affines(
    graph: fx.Graph, modules: dict[str, nn.Module], is_static: object, calls: dict[str, int]
) -> int:
    """Fold the arithmetic with constant numbers before each static int8 conv on the native
    first-layer kernel (called once; a normalization ``(x - mean) / std``) into that conv's
    input quantization (:data:`~modelzip.kernels.int8.INPUT_AFFINE_ATTR`), and drop its nodes
    from ``graph``. Returns how many convs."""
    folded = 0
    for node in list(graph.nodes):
        conv = modules.get(str(node.target)) if node.op == "call_module" else None
        if not is_static(conv) or calls.get(str(node.target), 0) != 1:  # type: ignore[operator]
            continue
        if conv.__dict__.get(ENGINE_ATTR) != "native" or len(node.args) != 1 or node.kwargs:  # type: ignore[union-attr]
            continue
        start, scale, shift, nodes = constant_affine(node.args[0])
        if not nodes:
            continue
        node.args = (start,)
        for n in nodes:
            graph.erase_node(n)
        conv.__dict__[INPUT_AFFINE_ATTR] = (scale, shift)  # type: ignore[union-attr]
        folded += 1
    return folded


def unfold(model: nn.Module) -> None:
    """Clear every fold: the layers compute their own output again (their BN and ReLU run
    after)."""
    for m in model.modules():
        m.__dict__.pop(FOLD_ATTR, None)
        m.__dict__.pop(RELU_ATTR, None)
        m.__dict__.pop(INPUT_AFFINE_ATTR, None)
