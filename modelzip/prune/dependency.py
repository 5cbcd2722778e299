"""Which channels of a model are coupled: trace it with torch.fx and group its channel spaces.

A *channel space* is the set of channels one layer produces (a conv's filters, a linear's
outputs). Operations relate spaces: a BatchNorm, ReLU or pooling passes its input's channels on;
an addition (a residual connection) makes its operands' spaces one group, so that a channel is
removed from all members of the add group or from none; a concatenation lays spaces side by side;
a flatten turns each of ``C`` channels into ``H·W`` consecutive features of the next linear layer;
a depthwise conv carries its input's channels through. Channels that reach the model's output or
come from its input, or pass an operation this analysis does not know, are *fixed* (never
removed), so an unknown op costs pruning opportunity, never correctness.

The result (:class:`ChannelGraph`) lists the prunable groups with their producers and every module
that must be sliced when a group loses channels; :mod:`modelzip.prune.channels` acts on it
(analysis apart from action, as in Torch-Pruning's ``dependency/``).
"""

from __future__ import annotations

import dataclasses
import operator
import traceback
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from modelzip.core.errors import ModelError

#: A value's channel dimension as segments ``(space, channels, repeat)``: ``repeat`` features
#: per channel (``H·W`` after a flatten), laid side by side (concatenation).
Segments = tuple[tuple[int, int, int], ...]

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.ELU,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.relu6,
    torch.nn.functional.hardswish,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float"}
_ELEMENTWISE = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    operator.iadd,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


@dataclasses.dataclass
class Member:
    """A module sliced along some of its channels when groups lose channels.

    ``role`` is ``"out"`` (a producer: rows of a conv/linear weight), ``"in"`` (a consumer:
    columns, indexed through ``segments``) or ``"through"`` (BatchNorm, depthwise conv: all
    its per-channel tensors, indexed through ``segments``).
    """

    name: str
    role: str
    segments: Segments
    kind: str = ""


@dataclasses.dataclass
class ChannelGraph:
    """Prunable channel groups of a traced model.

    Attributes
    ----------
    groups:
        ``root -> channels`` for each prunable group.
    producers:
        ``root -> [module names]`` whose output channels form the group.
    members:
        Every module to slice, with how.
    space_root:
        ``space -> root`` (fixed spaces map to -1).
    """

    groups: dict[int, int]
    producers: dict[int, list[str]]
    members: list[Member]
    space_root: dict[int, int]

    def bn_of(self, root: int) -> list[str]:
        """BatchNorm layers that normalise exactly the group's channels (network slimming)."""
        return [
            m.name
            for m in self.members
            if m.kind.startswith("BatchNorm")
            and len(m.segments) == 1
            and self.space_root.get(m.segments[0][0]) == root
        ]


class _Spaces:
    """Union-find over channel spaces, with a 'fixed' flag that spreads on union."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []

    def new(self, channels: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(channels)
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb] or self.size[ra] != self.size[rb]

    def fix(self, segments: Segments | None) -> None:
        for space, _, _ in segments or ():
            self.fixed[self.find(space)] = True


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _user_frame(exc: BaseException) -> str:
    """The last frame of the failing trace outside torch: the operation to blame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno}: `{(f.line or '').strip()}`"


def trace(model: nn.Module, sample: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with shapes, or a :class:`ModelError` naming the operation."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError ...
        raise ModelError(
            f"channel pruning must trace {type(model).__name__} with torch.fx and cannot: "
            f"{type(e).__name__}: {e}{_user_frame(e)}. Data-dependent control flow or calls "
            "on traced values are not traceable; prune such a model layer by layer "
            "(vector_prune) instead"
        ) from None
    with torch.no_grad():
        ShapeProp(gm).propagate(sample)
    return gm


def channel_graph(model: nn.Module, sample: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` on ``sample`` and group its coupled channels (see the module docstring)."""
    gm = trace(model, sample)
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    sp = _Spaces()
    value: dict[torch.fx.Node, Segments | None] = {}
    members: list[Member] = []
    producers: dict[int, list[str]] = {}

    def fresh(node: Any, fixed: bool) -> Segments | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return ((sp.new(shape[1], fixed), shape[1], 1),)

    def unknown(node: Any) -> Segments | None:
        for arg in node.all_input_nodes:
            sp.fix(value.get(arg))
        return fresh(node, fixed=True)

    for node in gm.graph.nodes:
        ins = [value.get(a) for a in node.all_input_nodes]
        first = node.args[0] if node.args else None
        seg_in = value.get(first) if isinstance(first, torch.fx.Node) else None
        if node.op == "placeholder":
            value[node] = fresh(node, fixed=True)
        elif node.op == "get_attr":
            value[node] = None
        elif node.op == "output":
            for s in ins:
                sp.fix(s)
        elif node.op == "call_module":
            mod = modules[node.target]
            if calls[node.target] > 1:  # a shared layer would be sliced two ways
                value[node] = unknown(node)
            elif type(mod) in (nn.Conv2d, nn.Linear) and seg_in is not None:
                in_shape = _shape(first)
                depthwise = isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels == (
                    mod.out_channels
                )
                linear_3d = isinstance(mod, nn.Linear) and (in_shape is None or len(in_shape) != 2)
                grouped = isinstance(mod, nn.Conv2d) and mod.groups > 1 and not depthwise
                if linear_3d or grouped:  # channels not along dim 1, or in groups
                    value[node] = unknown(node)
                elif depthwise:
                    members.append(Member(node.target, "through", seg_in))
                    value[node] = seg_in
                else:
                    members.append(Member(node.target, "in", seg_in))
                    out = fresh(node, fixed=False)
                    members.append(Member(node.target, "out", out))
                    producers.setdefault(out[0][0], []).append(node.target)
                    value[node] = out
            elif type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d) and seg_in is not None:
                if all(r == 1 for _, _, r in seg_in):
                    members.append(Member(node.target, "through", seg_in, type(mod).__name__))
                    value[node] = seg_in
                else:
                    value[node] = unknown(node)
            elif isinstance(mod, _PASS_MODULES):
                value[node] = seg_in
            elif isinstance(mod, nn.Flatten):
                value[node] = _flatten(first, node, seg_in) or unknown(node)
            else:
                value[node] = unknown(node)
        elif (node.op == "call_function" and node.target in _PASS_FUNCTIONS) or (
            node.op == "call_method" and node.target in _PASS_METHODS
        ):
            value[node] = seg_in
        elif (node.op == "call_function" and node.target in _ELEMENTWISE) or (
            node.op == "call_method" and node.target in _ELEMENTWISE_METHODS
        ):
            value[node] = _elementwise(node, value, sp) or unknown(node)
        elif node.op == "call_function" and node.target is torch.cat:
            value[node] = _concat(node, value) or unknown(node)
        elif (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target in _FLATTEN_METHODS
        ):
            value[node] = _flatten(first, node, seg_in) or unknown(node)
        elif (node.op == "call_method" and node.target in ("size", "dim")) or (
            node.op == "call_function" and node.target is getattr
        ):
            value[node] = None
        else:
            value[node] = unknown(node)

    roots: dict[int, int] = {}
    space_root: dict[int, int] = {}
    for space in range(len(sp.parent)):
        root = sp.find(space)
        space_root[space] = -1 if sp.fixed[root] else root
    grouped: dict[int, list[str]] = {}
    for space, names in producers.items():
        root = space_root[space]
        if root >= 0:
            grouped.setdefault(root, []).extend(names)
            roots[root] = sp.size[root]
    return ChannelGraph(roots, grouped, members, space_root)


def _elementwise(node: Any, value: dict, sp: _Spaces) -> Segments | None:
    """An add/mul of same-shaped tensors couples their channels; a scalar operand passes."""
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node) and _shape(a) is not None]
    if not tensors:
        return None
    shapes = {_shape(a) for a in tensors}
    if len(shapes) != 1 or _shape(node) not in shapes:
        return None  # broadcasting (e.g. a per-channel scale) is not understood here
    segs = [value.get(a) for a in tensors]
    if any(s is None for s in segs):
        return None
    ref = segs[0]
    for other in segs[1:]:
        if [(c, r) for _, c, r in other] != [(c, r) for _, c, r in ref]:
            for s in segs:
                sp.fix(s)
            return None
        for (a, _, _), (b, _, _) in zip(ref, other, strict=True):
            sp.union(a, b)
    return ref


def _concat(node: Any, value: dict) -> Segments | None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = _shape(node)
    if shape is None or not isinstance(tensors, (list, tuple)):
        return None
    if dim < 0:
        dim += len(shape)
    if dim != 1:
        return None
    segs = [value.get(t) for t in tensors]
    if any(s is None for s in segs):
        return None
    return tuple(x for s in segs for x in s)


def _flatten(first: Any, node: Any, seg_in: Segments | None) -> Segments | None:
    """``(N, C, H, W) -> (N, C·H·W)``: each channel becomes ``H·W`` consecutive features."""
    in_shape, out_shape = _shape(first), _shape(node)
    if seg_in is None or in_shape is None or out_shape is None:
        return None
    if len(out_shape) != 2 or out_shape[0] != in_shape[0]:
        return None
    per = 1
    for d in in_shape[2:]:
        per *= d
    if out_shape[1] != in_shape[1] * per:
        return None
    return tuple((s, c, r * per) for s, c, r in seg_in)
