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
    nn.Hardtanh,
    nn.Mish,
    nn.Softplus,
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
    torch.nn.functional.hardsigmoid,
    torch.nn.functional.dropout2d,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "contiguous",
    "clone",
    "detach",
    "float",
}
#: Functions wrapped as opaque calls by their library (``torch.fx.wrap``) that pass channels.
_PASS_NAMES = {"stochastic_depth", "hardsigmoid", "dropout2d"}
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
    left:
        ``layer -> why`` for every conv/linear whose output channels cannot be pruned (they reach
        the output, pass an operation the analysis does not follow, are grouped, ...).
    opaque:
        Submodules kept opaque because they do not trace with torch.fx (their channels fixed).
    """

    groups: dict[int, int]
    producers: dict[int, list[str]]
    members: list[Member]
    space_root: dict[int, int]
    left: dict[str, str] = dataclasses.field(default_factory=dict)
    opaque: list[str] = dataclasses.field(default_factory=list)

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
    """Union-find over channel spaces, with a 'fixed' reason that spreads on union."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.why: list[str | None] = []

    @property
    def fixed(self) -> list[bool]:
        return [w is not None for w in self.why]

    def new(self, channels: int, why: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(channels)
        self.why.append(why)
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
        if self.size[ra] != self.size[rb]:
            self.why[ra] = self.why[ra] or "it is added to channels of another width"
        self.why[ra] = self.why[ra] or self.why[rb]

    def fix(self, segments: Segments | None, why: str) -> None:
        for space, _, _ in segments or ():
            root = self.find(space)
            self.why[root] = self.why[root] or why


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


class _LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer that keeps the given submodules opaque (called, not traced through)."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def _fx(model: nn.Module, leaves: set[str]) -> torch.fx.GraphModule:
    tracer = _LeafTracer(leaves)
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _opaque_modules(model: nn.Module) -> set[str]:
    """The fallback when the whole model does not trace: the smallest submodules that do not
    trace (bottom-up) become opaque calls, so the rest of the model is still analysed."""
    leaves: set[str] = set()
    names = [n for n, m in model.named_modules() if n and not _is_torch_leaf(m)]
    for name in sorted(names, key=lambda n: -n.count(".")):  # children before parents
        if any(name.startswith(leaf + ".") for leaf in leaves):
            continue
        sub = model.get_submodule(name)
        inner = {leaf[len(name) + 1 :] for leaf in leaves if leaf.startswith(name + ".")}
        try:
            _fx(sub, inner)
        except Exception:  # fx raises TraceError, TypeError, NotImplementedError ...
            leaves = {leaf for leaf in leaves if not leaf.startswith(name + ".")} | {name}
    return leaves


def _is_torch_leaf(m: nn.Module) -> bool:
    return torch.fx.Tracer().is_leaf_module(m, "")


def trace(model: nn.Module, sample: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.fx`` trace with shapes. A model that does not trace as a whole is traced again
    with the submodules that do not trace kept opaque (their channels are then fixed); only when
    even that fails (the model's own forward is untraceable) a :class:`ModelError` names it."""
    try:
        gm = _fx(model, set())
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError ...
        first = e
        leaves = _opaque_modules(model)
        try:
            gm = _fx(model, leaves)
        except Exception:
            raise ModelError(
                f"channel pruning must trace {type(model).__name__} with torch.fx and cannot: "
                f"{type(first).__name__}: {first}{_user_frame(first)}. Data-dependent control "
                "flow or calls on traced values are not traceable; prune such a model layer by "
                "layer (vector_prune) instead"
            ) from None
        gm.meta["opaque"] = sorted(leaves)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(sample)
    except Exception as e:
        cause = e.__cause__ or e
        raise ModelError(
            f"{type(model).__name__} does not run on the sample of shape "
            f"{tuple(getattr(sample, 'shape', ()))}: {type(cause).__name__}: {str(cause)[:300]}"
        ) from None
    return gm


def _describe(node: Any, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _norm_dims(dims: Any, ndim: int) -> list[int] | None:
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return [d % ndim for d in dims]


def channel_graph(model: nn.Module, sample: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` on ``sample`` and group its coupled channels (see the module docstring)."""
    gm = trace(model, sample)
    modules = dict(gm.named_modules())
    params = dict(gm.named_parameters())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    sp = _Spaces()
    value: dict[torch.fx.Node, Segments | None] = {}
    cdim: dict[torch.fx.Node, int] = {}  # the channel dimension of a value (1, or last)
    members: list[Member] = []
    producers: dict[int, list[str]] = {}
    left: dict[str, str] = {}  # producing layers the analysis cannot prune, and why

    def fresh(node: Any, why: str | None, last: bool = False) -> Segments | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        cdim[node] = len(shape) - 1 if last else 1
        if why is not None and not last:
            # An operation not followed: guess where its channels lie, for the layers after it
            # (a wrong guess only leaves those layers unpruned): as in an input of the same
            # rank, else last for (N, L, C) sequences.
            cdim[node] = _guess_cdim(node, shape, cdim)
        channels = shape[cdim[node]]
        return ((sp.new(channels, why), channels, 1),)

    def unknown(node: Any, why: str | None = None) -> Segments | None:
        why = why or (
            f"its channels pass `{_describe(node, modules)}`, an operation the channel "
            "analysis does not follow"
        )
        for arg in node.all_input_nodes:
            sp.fix(value.get(arg), why)
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            left[node.target] = why
        return fresh(node, why)

    def channels_of(node: Any) -> int | None:
        shape = _shape(node)
        return shape[cdim.get(node, 1)] if shape is not None and len(shape) >= 2 else None

    for node in gm.graph.nodes:
        ins = [value.get(a) for a in node.all_input_nodes]
        first = node.args[0] if node.args else None
        seg_in = value.get(first) if isinstance(first, torch.fx.Node) else None
        cd_in = cdim.get(first, 1) if isinstance(first, torch.fx.Node) else 1
        in_shape = _shape(first)
        nd_in = len(in_shape) if in_shape is not None else 0

        def passes(node: Any = node, seg: Any = seg_in, cd: int = cd_in) -> Segments | None:
            cdim[node] = cd
            return seg

        if node.op == "placeholder":
            value[node] = fresh(node, "its channels come from the model's input")
        elif node.op == "get_attr":
            value[node] = None
        elif node.op == "output":
            for s in ins:
                sp.fix(s, "its channels reach the model's output")
        elif node.op == "call_module":
            mod = modules[node.target]
            stateful = any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())
            if calls[node.target] > 1 and stateful:  # a shared layer would be sliced two ways
                value[node] = unknown(
                    node, f"{node.target} is one layer called {calls[node.target]} times"
                )
            elif type(mod) is nn.Conv2d and seg_in is not None and cd_in == 1:
                depthwise = mod.groups == mod.in_channels == mod.out_channels or (
                    1 < mod.groups == mod.in_channels and mod.out_channels % mod.groups == 0
                )
                if mod.groups > 1 and not depthwise:  # channels in groups
                    value[node] = unknown(
                        node, f"{node.target} is a grouped conv ({mod.groups} groups)"
                    )
                elif depthwise:
                    # m filters per input channel (depth multiplier): output channel c·m + j
                    # comes from input channel c, so each channel becomes m consecutive ones.
                    m = mod.out_channels // mod.in_channels
                    out = tuple((space, c, r * m) for space, c, r in seg_in)
                    members.append(Member(node.target, "through", out))
                    value[node] = passes(seg=out)
                else:
                    value[node] = _produce(node, seg_in, members, producers, fresh)
            elif type(mod) is nn.Linear and seg_in is not None and cd_in == nd_in - 1:
                value[node] = _produce(node, seg_in, members, producers, fresh, last=True)
            elif type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d) and seg_in is not None:
                if cd_in == 1 and all(r == 1 for _, _, r in seg_in):
                    members.append(Member(node.target, "through", seg_in, type(mod).__name__))
                    value[node] = passes()
                else:
                    value[node] = unknown(node)
            elif (
                type(mod) is nn.LayerNorm
                and seg_in is not None
                and cd_in == nd_in - 1
                and tuple(mod.normalized_shape) == (in_shape[-1],)
                and all(r == 1 for _, _, r in seg_in)
            ):
                if mod.elementwise_affine:
                    members.append(Member(node.target, "through", seg_in, "LayerNorm"))
                value[node] = passes()
            elif isinstance(mod, _PASS_MODULES):
                value[node] = passes()
            elif isinstance(mod, nn.Flatten) and cd_in == 1:
                value[node] = _flatten(first, node, seg_in) or unknown(node)
                cdim[node] = 1
            else:
                value[node] = unknown(node)
        elif (
            node.op == "call_function"
            and (node.target in _PASS_FUNCTIONS or _name(node.target) in _PASS_NAMES)
        ) or (node.op == "call_method" and node.target in _PASS_METHODS):
            value[node] = passes()
        elif (node.op == "call_function" and node.target in _ELEMENTWISE) or (
            node.op == "call_method" and node.target in _ELEMENTWISE_METHODS
        ):
            out = _elementwise(node, value, cdim, sp, params, members)
            if out is None:
                value[node] = unknown(node)
            else:
                value[node], cdim[node] = out
        elif node.op == "call_function" and node.target is torch.cat:
            value[node] = _concat(node, value, cdim) or unknown(node)
        elif (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target in _FLATTEN_METHODS
        ):
            value[node] = (_flatten(first, node, seg_in) if cd_in == 1 else None) or unknown(node)
            cdim[node] = 1
        elif (node.op == "call_function" and node.target is torch.permute) or (
            node.op == "call_method" and node.target == "permute"
        ):
            dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
            dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
            dims = _norm_dims(list(dims), nd_in) if nd_in else None
            if seg_in is not None and dims is not None and cd_in in dims:
                value[node] = passes(cd=dims.index(cd_in))
            else:
                value[node] = unknown(node)
        elif (node.op == "call_function" and node.target is torch.mean) or (
            node.op == "call_method" and node.target == "mean"
        ):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            dims = _norm_dims(dims, nd_in) if nd_in else None
            if seg_in is not None and dims is not None and cd_in not in dims:
                value[node] = passes(cd=cd_in if keep else cd_in - sum(d < cd_in for d in dims))
            else:
                value[node] = unknown(node)
        elif node.op == "call_function" and node.target is torch.nn.functional.layer_norm:
            value[node] = _layer_norm(node, seg_in, cd_in, nd_in, params, members)
            if value[node] is None:
                value[node] = unknown(node)
            else:
                cdim[node] = cd_in
        elif (node.op == "call_method" and node.target in ("size", "dim")) or (
            node.op == "call_function" and node.target is getattr
        ):
            value[node] = None
        else:
            value[node] = unknown(node)
        if value.get(node) is not None and channels_of(node) != sum(
            c * r for _, c, r in value[node]
        ):  # a bookkeeping mismatch: refuse to prune what this value carries
            sp.fix(value[node], f"`{_describe(node, modules)}` changes the channel count")
            value[node] = fresh(node, "unexpected channel count")

    _fix_inside_compressed(model, members, sp)
    roots: dict[int, int] = {}
    space_root: dict[int, int] = {}
    for space in range(len(sp.parent)):
        root = sp.find(space)
        space_root[space] = -1 if sp.why[root] is not None else root
    grouped: dict[int, list[str]] = {}
    for space, names in producers.items():
        root = space_root[space]
        if root >= 0:
            grouped.setdefault(root, []).extend(names)
            roots[root] = sp.size[root]
        else:
            for name in names:
                left[name] = str(sp.why[sp.find(space)])
    return ChannelGraph(roots, grouped, members, space_root, left, list(gm.meta.get("opaque", [])))


def compressed_owner(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    """The outermost modelzip compressed layer that holds the module (or parameter) ``name``
    below it, with its name; None when no compressed layer holds it."""
    from modelzip.core.module import CompressedModule

    path = name.split(".")
    for i in range(1, len(path)):
        prefix = ".".join(path[:i])
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            return None
        if isinstance(module, CompressedModule):
            return prefix, module
    return None


def _fix_inside_compressed(model: nn.Module, members: list[Member], sp: _Spaces) -> None:
    """Channels inside a compressed layer change only where it says they may
    (:attr:`~modelzip.core.module.CompressedModule.channel_parts`): the inputs of its first part
    and the outputs of its last; the channels between its parts (a rank) and those of any other
    layer inside a compressed one are fixed, with the reason."""
    for m in members:
        found = compressed_owner(model, m.name)
        if found is None:
            continue
        owner_name, owner = found
        what = f"{owner_name} ({type(owner).__name__})"
        part = m.name[len(owner_name) + 1 :]
        ends = owner.channel_parts
        if part not in ends and (part not in owner.compressible_parts or not ends):
            sp.fix(m.segments, f"{what} keeps its channels (its spec fixes them)")
        elif m.role == "out" and part != ends[-1]:
            sp.fix(m.segments, f"the channels between the parts of {what} are its own setting")


def _guess_cdim(node: Any, shape: tuple[int, ...], cdim: dict) -> int:
    """Where the channels of an operation's output lie, when the operation is not followed."""
    known = [a for a in node.all_input_nodes if a in cdim and _shape(a)]
    if not known:
        return 2 if len(shape) == 3 else 1
    in_shape, in_cd = _shape(known[0]), cdim[known[0]]
    channels = in_shape[in_cd]
    if in_shape == shape:
        return in_cd
    last = len(in_shape) == len(shape) and in_cd == len(in_shape) - 1
    if last or (channels >= 8 and shape[-1] == channels != shape[1]):  # e.g. window partition
        return len(shape) - 1
    return 2 if len(shape) == 3 and shape[1] != channels else 1


def _name(target: Any) -> str:
    return getattr(target, "__name__", "")


def _produce(
    node: Any, seg_in: Segments, members: list, producers: dict, fresh: Any, last: bool = False
) -> Any:
    """A conv or linear: consumes its input's channels, produces a fresh prunable space."""
    out = fresh(node, None, last)
    if out is None:
        return None
    members.append(Member(node.target, "in", seg_in))
    members.append(Member(node.target, "out", out))
    producers.setdefault(out[0][0], []).append(node.target)
    return out


def _param_member(
    target: str, params: dict, seg: Segments, axis_from_right: int, members: list
) -> bool:
    """A parameter used per channel (a layer scale, a norm's weight): sliced with the group."""
    p = params.get(target)
    if p is None:
        return False
    channels = sum(c * r for _, c, r in seg)
    axis = p.dim() - axis_from_right
    if axis < 0 or p.shape[axis] != channels or p.numel() != channels:
        return False
    if any(r != 1 for _, _, r in seg):
        return False
    members.append(Member(target, "param", seg, f"axis{axis}"))
    return True


def _layer_norm(
    node: Any, seg_in: Any, cd_in: int, nd_in: int, params: dict, members: list
) -> Segments | None:
    """``F.layer_norm(x, (C,), weight, bias)`` over the channel (last) dimension."""
    args = list(node.args) + [None] * 5
    shape, weight, bias = args[1], args[2], args[3]
    weight = node.kwargs.get("weight", weight)
    bias = node.kwargs.get("bias", bias)
    if seg_in is None or cd_in != nd_in - 1 or not isinstance(shape, (list, tuple)):
        return None
    if len(shape) != 1:
        return None
    for p in (weight, bias):
        if p is None:
            continue
        if not (isinstance(p, torch.fx.Node) and p.op == "get_attr"):
            return None
        if not _param_member(p.target, params, seg_in, 1, members):
            return None
    return seg_in


def _elementwise(
    node: Any, value: dict, cdim: dict, sp: _Spaces, params: dict, members: list
) -> tuple[Segments, int] | None:
    """An add/mul couples the channels of its operands (broadcasting over other dimensions, as
    a squeeze-excitation scale does); a scalar, or an operand of one channel, passes; a parameter
    with one value per channel (a layer scale) is sliced with the group."""
    out_shape = _shape(node)
    if out_shape is None or len(out_shape) < 2:
        return None
    nd = len(out_shape)
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    found: list[tuple[Segments, int]] = []
    attrs = []
    for a in tensors:
        shape = _shape(a)
        if a.op == "get_attr":
            attrs.append(a)
            continue
        if shape is None:
            return None  # a value not known to be a tensor
        if len(shape) == 0 or all(d == 1 for d in shape):
            continue  # a scalar tensor
        seg = value.get(a)
        if seg is None:
            return None
        cd = cdim.get(a, 1)
        if shape[cd] == 1:
            continue  # broadcast along the channels: couples none
        found.append((seg, cd + nd - len(shape)))
    if not found:
        return None
    ref, cd = found[0]
    for other, ocd in found[1:]:
        same = ocd == cd and [(c, r) for _, c, r in other] == [(c, r) for _, c, r in ref]
        if not same:
            for s, _ in found:
                sp.fix(s, f"`{_name(node.target) or node.target}` adds channels laid out otherwise")
            return None
        for (a, _, _), (b, _, _) in zip(ref, other, strict=True):
            sp.union(a, b)
    for a in attrs:
        p = params.get(a.target)
        if p is not None and p.numel() == 1:
            continue
        if not _param_member(a.target, params, ref, nd - cd, members):
            return None
    return ref, cd


def _concat(node: Any, value: dict, cdim: dict) -> Segments | None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = _shape(node)
    if shape is None or not isinstance(tensors, (list, tuple)):
        return None
    if dim < 0:
        dim += len(shape)
    if any(cdim.get(t, 1) != dim for t in tensors):
        return None
    segs = [value.get(t) for t in tensors]
    if any(s is None for s in segs):
        return None
    cdim[node] = dim
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
