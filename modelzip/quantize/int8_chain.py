"""Static int8 layers that hand each other uint8 tensors instead of float.

A static int8 layer alone quantizes its float input, runs the int8 product and dequantizes its
output; between two such layers the activation goes uint8 → float → uint8, and the ReLU, pooling
and residual adds between them run in float on 4× the bytes. In a deployed model this pass does
what PyTorch's FX ``convert`` does, on our own calibrated grids:

* a layer whose output reaches only static int8 layers, residual adds and ops that PyTorch runs on
  quantized tensors as they are (ReLU, max and average pooling, flatten, reshape, dropout in eval)
  writes its output straight on the next layer's input grid (``torch.ops.quantized.linear`` and
  ``conv2d`` requantize in the kernel), or on its own calibrated output grid when only adds read
  it; the next layer takes the uint8 tensor as it is;
* a residual add of two such tensors whose sum reaches static int8 layers runs as
  ``torch.ops.quantized.add`` onto their grid (``add_relu``, one pass, when a ReLU reads it);
* a BatchNorm or a ReLU right after a static int8 layer is folded into it
  (:mod:`modelzip.quantize.int8_bn_fold`): the ReLU runs in the requantization of
  ``torch.ops.quantized.linear_relu``/``conv2d_relu`` instead of as a pass of its own;
* a 2×2 max pooling of stride 2 on such a tensor runs as two elementwise maxima of its codes
  (:func:`quantized_max_pool2x2`, ten times PyTorch's quantized pooling on LeNet-5's first one).

The model's code cannot add quantized tensors nor skip its ReLUs, so with adds, folds or such
pools the deployed model is a ``torch.fx.GraphModule`` of it with those nodes replaced; it keeps
the eager model (:data:`EAGER_ATTR`, sharing every layer) for :func:`modelzip.deploy.trainable`
and saving.

The result differs from the unchained model only in rounding: a value is rounded once onto the
grid its reader uses instead of twice. ReLU and max pooling commute with the monotone uint8 map.

The links are plain attributes of the layers (:data:`EMIT_ATTR`), not saved: a deployed file
records that it was chained and :func:`chain_static_int8` runs again on load.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modelzip.core.compact_source import CHAIN_ATTR
from modelzip.core.model_links import LinkedModel, module_calls, register_link, trace_layers
from modelzip.kernels._native import native
from modelzip.kernels.int8 import EMIT_ATTR
from modelzip.quantize.int8_bn_fold import (
    fold_batchnorms,
    fold_input_affines,
    fuse_relus,
    is_relu,
    unfold,
)

#: On a chained GraphModule: the eager model it was traced from (same layers).
EAGER_ATTR = "_modelzip_eager"

# Ops that take a quantized tensor (their first argument) and return one on the same grid.
_SAME_GRID_MODULES = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.MaxPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
_SAME_GRID_FUNCTIONS = (
    F.relu,
    torch.relu,
    torch.flatten,
    F.max_pool2d,
    F.adaptive_avg_pool2d,
    F.dropout,
    torch.reshape,
)
_SAME_GRID_METHODS = ("relu", "relu_", "view", "reshape", "flatten", "contiguous")
_SHAPE_METHODS = ("size", "dim")
# Same-grid ops whose output range is narrower than their input's: an average is never larger
# than the largest value averaged, so a reader's input grid, calibrated after the average, can
# clip the values before it. A residual add read through one writes on a grid from its
# operands' ranges instead (a ResNet's last sum, on the classifier's input grid behind the
# global average pool, came out 11% off). A static layer keeps its reader's grid: its own
# (folded) grid is coarser and cost a random VGG more than the clipping did.
_AVERAGING_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_AVERAGING_FUNCTIONS = (F.adaptive_avg_pool2d,)
_ADDS = (operator.add, torch.add)


def _is_static(module: Any) -> bool:
    from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear

    return isinstance(module, (StaticInt8Linear, StaticInt8Conv2d))


_ADD, _ADD_RELU = torch.ops.quantized.add.default, torch.ops.quantized.add_relu.default


def quantized_add(a: torch.Tensor, b: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``a + b`` of two quantized tensors onto the grid ``(scale, zero)``."""
    return _ADD(a, b, scale, zero)


def quantized_add_relu(a: torch.Tensor, b: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``relu(a + b)`` of two quantized tensors onto the grid ``(scale, zero)``, in one pass."""
    return _ADD_RELU(a, b, scale, zero)


def _fuse_add_relus(graph: fx.Graph, adds: list[fx.Node], modules: dict[str, nn.Module]) -> None:
    """Each quantized add whose one reader is a ReLU takes that ReLU into its requantization
    (``quantized::add_relu``, as FX's ``convert`` does); the ReLU node is dropped. ReLU
    commutes with the monotone uint8 map, so the result is the same."""
    for node in adds:
        users = list(node.users)
        if len(users) != 1 or not is_relu(users[0], modules) or users[0].args[:1] != (node,):
            continue
        node.target = quantized_add_relu
        users[0].replace_all_uses_with(node)
        graph.erase_node(users[0])


def _is_pool2x2(module: Any) -> bool:
    """Whether ``module`` is a 2×2 max pooling of stride 2 (floor mode, no padding, no indices)."""
    if not isinstance(module, nn.MaxPool2d) or module.return_indices or module.ceil_mode:
        return False
    two = (2, (2, 2))
    plain = module.padding in (0, (0, 0)) and module.dilation in (1, (1, 1))
    return plain and module.kernel_size in two and module.stride in (*two, None)


def quantized_max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """2×2 max pooling (stride 2) of a uint8 tensor on one grid, on its codes, bit-identical
    (max commutes with the monotone uint8 map): a channels-last one on the native kernel
    (``native/uint8_pool.h``), else as two elementwise maxima of its codes read in place. On an
    AVX2 EPYC PyTorch's ``quantized_max_pool2d`` took 0.92 ms on a 64×20×24×24 channels-last
    tensor (its loop vectorizes over channels, 20 of 32 lanes), the maxima 0.10 ms. On a Zen 4,
    2 threads, 64×32×28×28: the maxima 0.20 ms (threading a strided loop, and a result wrapped
    by an element-wise copy), PyTorch's 0.13, the native kernel 0.05; 64×20×24×24: 0.18, 0.51,
    0.04. Written by hand: no library pools uint8 codes in place."""
    if x.dtype != torch.quint8 or x.qscheme() != torch.per_tensor_affine:
        return F.max_pool2d(x, 2)
    mod = native() if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    if mod is not None:
        return mod.uint8_max_pool2x2(x)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    codes = torch.empty(0, dtype=torch.uint8, device=x.device)
    codes = codes.set_(x.untyped_storage(), x.storage_offset(), x.size(), x.stride())
    codes = codes[..., :h, :w]
    rows = torch.maximum(codes[..., 0::2, :], codes[..., 1::2, :])
    out = torch.maximum(rows[..., 0::2], rows[..., 1::2])
    return torch._make_per_tensor_quantized_tensor(out, x.q_scale(), x.q_zero_point())


class ChainedModel(LinkedModel):
    """The GraphModule a chained model with int8 residual adds runs as."""


class _Graph:
    """The traced model's nodes sorted into static int8 layers, same-grid ops and adds."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.modules = dict(model.named_modules())
        self.graph = graph
        calls = module_calls(graph)
        # A layer called twice (shared) would need one grid for both calls: left unchained.
        self.static = {
            n for n in graph.nodes
            if n.op == "call_module" and _is_static(self.modules.get(str(n.target)))
            and calls[str(n.target)] == 1
        }  # fmt: skip
        self.same = {n for n in graph.nodes if self._same_grid(n)}
        self.adds = {
            n for n in graph.nodes
            if n.op == "call_function" and n.target in _ADDS and not n.kwargs and len(n.args) == 2
            and all(isinstance(a, fx.Node) for a in n.args)
        }  # fmt: skip

    def _same_grid(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            return isinstance(self.modules.get(str(n.target)), _SAME_GRID_MODULES)
        if n.op == "call_function":
            return n.target in _SAME_GRID_FUNCTIONS
        return n.op == "call_method" and n.target in _SAME_GRID_METHODS

    @staticmethod
    def _shape_only(n: fx.Node) -> bool:
        return (n.op == "call_method" and n.target in _SHAPE_METHODS) or (
            n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",)
        )

    def _accepts(self, user: fx.Node, value: fx.Node, q: set[fx.Node]) -> bool:
        """Whether ``user`` can read ``value`` as a quantized tensor."""
        if self._shape_only(user):
            return True
        if user in self.adds:
            return user in q
        return bool(user.args) and user.args[0] is value and (user in self.static or user in q)

    def _averages(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            return isinstance(self.modules.get(str(n.target)), _AVERAGING_MODULES)
        return n.op == "call_function" and n.target in _AVERAGING_FUNCTIONS

    def _readers(self, node: fx.Node) -> tuple[list[fx.Node], list[fx.Node], bool]:
        """The static layers and adds ``node``'s value reaches through same-grid ops, and
        whether any of them reads it through an average."""
        static, adds, stack, averaged = [], [], [node], False
        while stack:
            for user in stack.pop().users:
                if user in self.static:
                    static.append(user)
                elif user in self.adds:
                    adds.append(user)
                elif user in self.same:
                    averaged = averaged or self._averages(user)
                    stack.append(user)
        return static, adds, averaged

    def grid_of(self, node: fx.Node) -> tuple[float, int, int] | None:
        """The grid ``node`` (a static layer or an add) writes its output on, or None."""
        static, _, averaged = self._readers(node)
        grids = {
            tuple(float(v) for v in self.modules[str(s.target)].input_qparams())  # type: ignore[operator]
            for s in static
        }
        if node in self.adds and averaged:
            return self._sum_grid(node, reduce=bool(static))
        if len(grids) > 1:
            return None
        if grids:
            scale, zero, qmax = grids.pop()
            return scale, int(zero), int(qmax)
        if node in self.static:  # read by adds only: its own calibrated output grid
            return self._own_grid(self.modules[str(node.target)])
        return None  # an add read by adds only has no calibrated grid

    def _sum_grid(self, node: fx.Node, reduce: bool) -> tuple[float, int, int] | None:
        """A grid for an add's output from its operands' (no calibrated range of its own): their
        ranges summed (from 0 when a ReLU alone reads it), so nothing is clipped; a bit
        coarser than a calibrated one."""
        from modelzip.kernels.int8 import qparams

        lo = hi = 0.0
        for arg in node.args:
            while isinstance(arg, fx.Node) and arg in self.same and arg.args:
                arg = arg.args[0]  # the value on its producer's grid (a folded BN is Identity)
            grid = self.grid_of(arg) if isinstance(arg, fx.Node) else None
            if grid is None:
                return None
            scale, zero, qmax = grid
            lo, hi = lo - zero * scale, hi + (qmax - zero) * scale
        users = list(node.users)
        if len(users) == 1 and is_relu(users[0], self.modules):
            lo = 0.0
        scale, zero = qparams(lo, hi)
        return self._on_bits(scale, zero, reduce)

    @staticmethod
    def _own_grid(layer: Any) -> tuple[float, int, int]:
        """A static layer's calibrated output grid, through its folded BatchNorm if it has one:
        the conv's own range is not the normalized one's, and a ResNet block's second conv
        wrote its normalized output, read by the residual add, on the unnormalized grid."""
        from modelzip.kernels.int8 import ACT_QMAX, FOLD_ATTR

        fold = layer.__dict__.get(FOLD_ATTR)
        scale, zero = fold[2] if fold is not None else (float(layer.out_scale), int(layer.out_zero))
        return float(scale), int(zero), ACT_QMAX

    @staticmethod
    def _on_bits(scale: float, zero: int, reduce: bool) -> tuple[float, int, int]:
        """The 8-bit grid ``(scale, zero)``, or with ``reduce`` where int8 products can
        saturate its 7-bit form."""
        from modelzip.kernels import isa
        from modelzip.kernels.int8 import ACT_QMAX, QMAX_REDUCED, reduced_qparams

        if not (reduce and isa.reduced_int8_range()):
            return scale, zero, ACT_QMAX
        s7, z7 = reduced_qparams(torch.tensor(scale), torch.tensor(zero))
        return float(s7), int(z7), QMAX_REDUCED

    def quantized_nodes(self) -> dict[fx.Node, tuple[float, int, int] | None]:
        """The nodes whose output stays quantized, with the grid of those that make one."""
        q = self.static | self.same | self.adds
        grids: dict[fx.Node, tuple[float, int, int] | None] = {}
        changed = True
        while changed:
            changed = False
            for n in list(q):
                ok = all(self._accepts(u, n, q) for u in n.users)
                if n in self.same:
                    ok = ok and bool(n.args) and n.args[0] in q
                if n in self.adds:
                    ok = ok and all(a in q for a in n.args)
                if ok and (n in self.static or n in self.adds):
                    grids[n] = self.grid_of(n)
                    ok = grids[n] is not None
                if not ok:
                    q.discard(n)
                    changed = True
        return {n: grids.get(n) for n in q}


def unchain(model: nn.Module) -> nn.Module:
    """The model without links (every static int8 layer outputs float again): the eager model a
    chained GraphModule was traced from, or ``model`` itself."""
    eager = model.__dict__.get(EAGER_ATTR)
    if eager is not None:  # the notes set on the GraphModule since (a loaded file's source...)
        notes = {k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")}
        notes.pop(EAGER_ATTR)
        eager.__dict__.update(notes)
        model = eager
    for m in model.modules():
        m.__dict__.pop(EMIT_ATTR, None)
    unfold(model)
    model.__dict__.pop(CHAIN_ATTR, None)
    return model


def chain_static_int8(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Link the static int8 layers of ``model`` (see the module docstring). Returns the model to
    run (``model`` itself, or a GraphModule of it when residual adds run quantized), the number
    of layers and adds linked and, when there are none, why."""
    if sum(_is_static(m) for m in model.modules()) < 2:
        return model, 0, "fewer than two static int8 layers"
    graph, why = trace_layers(model)
    if graph is None:
        return model, 0, why
    # A BN right after a static conv would stop the chain there: folded, in the graph only.
    calls = module_calls(graph)
    modules = dict(model.named_modules())
    folds = fold_batchnorms(graph, modules, _is_static, calls)
    folds += fuse_relus(graph, modules, _is_static, calls)
    folds += fold_input_affines(graph, modules, _is_static, calls)
    info = _Graph(model, graph)
    quantized = info.quantized_nodes()
    links = 0
    for node, grid in quantized.items():
        if node in info.static and grid is not None:
            info.modules[str(node.target)].__dict__[EMIT_ATTR] = grid
            links += 1
    adds = [n for n in quantized if n in info.adds]
    for node in adds:
        scale, zero, _ = quantized[node]  # type: ignore[misc]
        node.target, node.args = quantized_add, (*node.args, scale, zero)
    _fuse_add_relus(graph, adds, info.modules)
    pools = [
        n for n in quantized
        if n.op == "call_module" and _is_pool2x2(info.modules.get(str(n.target))) and not n.kwargs
    ]  # fmt: skip
    for node in pools:
        node.op, node.target = "call_function", quantized_max_pool2x2
    if not links:
        unfold(model)
        return model, 0, "no static int8 layer feeds only int8 readers"
    model.__dict__[CHAIN_ATTR] = True
    if adds or folds or pools:
        traced = ChainedModel(model, graph, class_name=type(model).__name__ + "Int8")
        notes = {k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")}
        traced.__dict__.update(notes)
        traced.__dict__[EAGER_ATTR] = model
        model = traced
    return model, links + len(adds), ""


register_link("int8_chain", chain_static_int8, unchain)

__all__ = [
    "EAGER_ATTR",
    "EMIT_ATTR",
    "ChainedModel",
    "chain_static_int8",
    "quantized_add",
    "quantized_add_relu",
    "unchain",
]
