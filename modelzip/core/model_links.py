"""Whole-model rewrites that link a deployed model's layers, registered by the package that owns
them (quantize's int8 chain: static int8 layers passing uint8 on; the kernels' sparse chain: runs
of sparse linears as one call; export's onnxruntime link: a whole int8 model in one session), so
that deploy and serialize, which sit below the families, can apply and undo them without
importing a family.

A link's ``apply(model)`` returns ``(model to run, number of links, why none)``; ``undo(model)``
returns the unlinked model (the model itself when it has no links).
"""

from __future__ import annotations

import copy
import importlib
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from modelzip.core.errors import ModelError

Apply = Callable[[nn.Module], tuple[nn.Module, int, str]]
Undo = Callable[[nn.Module], nn.Module]

_LINKS: dict[str, tuple[Apply, Undo]] = {}


class LeafTracer(fx.Tracer):
    """Traces a model keeping compressed layers (and torch's own) as single nodes: the graph
    every model link rewrites."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from modelzip.core.module import CompressedModule

        return isinstance(m, CompressedModule) or super().is_leaf_module(m, qualname)


def trace_layers(model: nn.Module) -> tuple[fx.Graph | None, str]:
    """``model``'s graph (:class:`LeafTracer`) and ``""``, or None and why it cannot be traced
    (data-dependent control flow and the like: the model stays unlinked)."""
    try:
        return LeafTracer().trace(model), ""
    except Exception as e:
        return None, f"the model cannot be traced ({type(e).__name__}: {str(e)[:120]})"


def module_calls(graph: fx.Graph) -> dict[str, int]:
    """How many times the graph calls each submodule (a shared layer more than once)."""
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    return calls


def is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a ReLU: an ``nn.ReLU`` module, ``torch.relu``/``F.relu`` or the
    ``relu``/``relu_`` method (the ReLUs links fuse into the layer before them)."""
    if node.op == "call_module":
        return type(modules.get(str(node.target))) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu) and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and not node.kwargs


def constant_affine(node: Any) -> tuple[Any, float, float, list[fx.Node]]:
    """The arithmetic with constant numbers that ends at ``node`` (``x - m``, ``x + c``,
    ``x * a``, ``x / s``, each value read only by the next, as a model's normalization traces):
    ``(x's node, a, b, the nodes)``, ``node``'s value being ``x·a + b``; ``(node, 1, 0, [])``
    where there is none."""
    scale, shift, nodes = 1.0, 0.0, []
    while isinstance(node, fx.Node) and node.op == "call_function" and len(node.users) == 1:
        a, b = (*node.args, None, None)[:2]
        if not isinstance(a, fx.Node) or isinstance(b, bool) or not isinstance(b, (int, float)):
            break
        if node.kwargs or len(node.args) != 2:
            break
        if node.target is operator.sub:
            op_scale, op_shift = 1.0, -float(b)
        elif node.target is operator.add:
            op_scale, op_shift = 1.0, float(b)
        elif node.target is operator.mul:
            op_scale, op_shift = float(b), 0.0
        elif node.target is operator.truediv and b != 0:
            op_scale, op_shift = 1.0 / float(b), 0.0
        else:
            break
        # node = inner·op_scale + op_shift, and the outer ops apply (scale, shift) to node
        scale, shift = scale * op_scale, shift + scale * op_shift
        nodes.append(node)
        node = a
    return node, scale, shift, nodes


class LinkedModel(fx.GraphModule):
    """The GraphModule a linked model runs as; a copy keeps the model's notes (``_modelzip_*``:
    its source, recipe, deployment, the eager model), which GraphModule's own copy drops."""

    def __deepcopy__(self, memo: dict[int, Any]) -> LinkedModel:
        res = super().__deepcopy__(memo)
        for key, value in self.__dict__.items():
            if key.startswith("_modelzip_"):
                res.__dict__[key] = copy.deepcopy(value, memo)
        return res


#: On a linked GraphModule: the eager model it was traced from (every link's).
EAGER_ATTR = "_modelzip_eager"


def wrap_linked(model: nn.Module, root: nn.Module, graph: fx.Graph, attr: str) -> LinkedModel:
    """The GraphModule running ``graph`` over ``root``'s modules for the link that marks models
    with ``attr``: it keeps ``model``'s notes and ``model`` itself as its eager model, and both
    carry ``attr`` (a file saved from the eager model records the link)."""
    linked = LinkedModel(root, graph, class_name=type(model).__name__)
    linked.__dict__.update({k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")})
    linked.__dict__[EAGER_ATTR] = model
    linked.__dict__[attr] = True
    model.__dict__[attr] = True
    linked.eval()
    return linked


def unwrap_linked(model: nn.Module, attr: str) -> nn.Module:
    """The eager model of a GraphModule that the link marking ``attr`` made, with the notes set
    on the GraphModule since; or ``model`` itself (unwrapped already, e.g. by another link's
    undo). ``attr`` is cleared on what is returned."""
    eager = model.__dict__.get(EAGER_ATTR)
    if eager is None or not model.__dict__.get(attr):
        model.__dict__.pop(attr, None)
        return model
    notes = {k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")}
    for k in (EAGER_ATTR, attr):
        notes.pop(k)
    eager.__dict__.update(notes)
    eager.__dict__.pop(attr, None)
    return eager


def register_link(name: str, apply: Apply, undo: Undo) -> None:
    """Register the model link ``name`` (at import of the module that implements it)."""
    if name in _LINKS and _LINKS[name] != (apply, undo):
        raise ModelError(f"model link {name!r} is registered twice")
    _LINKS[name] = (apply, undo)


def model_link(name: str) -> tuple[Apply, Undo]:
    """``(apply, undo)`` of the link ``name``; the built-in families are imported first."""
    if name not in _LINKS:
        from modelzip.core.forms import import_kernels
        from modelzip.core.registry import list_methods

        list_methods()  # imports the built-in families, which register their links
        import_kernels()  # and the kernels (the sparse chain)
        importlib.import_module("modelzip.export.ort_link")  # and the onnxruntime link
    try:
        return _LINKS[name]
    except KeyError:
        raise ModelError(f"no model link {name!r} (known: {sorted(_LINKS)})") from None


def unlink(model: nn.Module) -> nn.Module:
    """``model`` with every registered link undone."""
    for _, undo in _LINKS.values():
        model = undo(model)
    return model
