"""Runs of sparse linear layers executed as one compiled call, as EIE does (Han et al., ISCA 2016).

At batch 1 a pruned LeNet-300 layer's sparse product takes a few microseconds (zero inputs
skipped: :func:`modelzip.kernels.sparse.csc_linear`) and the Python around each layer as long,
so a deployed model whose linears are all sparse gains little layer by layer. EIE keeps the
activations of a whole fully connected stack on chip and skips zero activations of every layer;
this link does the same on the CPU: a chain of CSR :class:`~modelzip.prune.sparse_exec.SparseLinear`
layers with ReLUs between them (each output read only by the next op) becomes one
:class:`SparseRun` whose forward, for a few float32 rows without autograd, is one Numba call over
all layers (other inputs go through the layers one by one, as before).

The deployed model is then a ``torch.fx.GraphModule`` of the eager model, sharing its layers; the
eager model is kept (``_modelzip_eager``) for :func:`modelzip.deploy.trainable` and saving, and a
deployed file records the link and makes it again on load (as the int8 chain does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import fx, nn

from modelzip.core.compact_source import SPARSE_CHAIN_ATTR
from modelzip.core.model_links import (
    EAGER_ATTR,
    constant_affine,
    register_link,
    trace_layers,
    unwrap_linked,
    wrap_linked,
)
from modelzip.kernels.sparse import CSCMatrix
from modelzip.kernels.sparse_layers import FEW_ROWS, matrix
from modelzip.prune.sparse_exec import SparseLinear

_RELUS = (F.relu, torch.relu)


@njit(cache=True, fastmath=True)
def _run_csc(plan, ints, floats, X, Y, scratch):
    """Every layer of ``plan`` on each row of ``X``, zero inputs skipped, activations kept in
    the two halves of ``scratch``. A plan row: offsets of the layer's column pointers and of its
    row indices in ``ints``, of its values and bias in ``floats``, fan-in, fan-out, ReLU."""
    last = plan.shape[0] - 1
    half = scratch.shape[0] // 2
    cur, nxt = scratch[:half], scratch[half:]
    for b in range(X.shape[0]):
        for k in range(X.shape[1]):
            cur[k] = X[b, k]
        for layer in range(plan.shape[0]):
            p0, i0, v0, b0, fan_in, fan_out, relu = plan[layer]
            for r in range(fan_out):
                nxt[r] = floats[b0 + r]
            for k in range(fan_in):
                xk = cur[k]
                if xk != 0:
                    for t in range(ints[p0 + k], ints[p0 + k + 1]):
                        nxt[ints[i0 + t]] += floats[v0 + t] * xk
            if relu:
                for r in range(fan_out):
                    if nxt[r] < 0:
                        nxt[r] = 0
            if layer == last:
                for r in range(fan_out):
                    Y[b, r] = nxt[r]
            else:
                for r in range(fan_out):
                    cur[r] = nxt[r]


class SparseRun(nn.Module):
    """Sparse linear layers (and the ReLUs after them) run as one call; the layers are shared
    with the eager model, not copied. The activations live in one scratch buffer per module:
    one call at a time per module (threads serving requests need a copy each)."""

    def __init__(
        self,
        layers: list[SparseLinear],
        relu: list[bool],
        scale: float = 1.0,
        shift: float = 0.0,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.relu = tuple(relu)
        #: The input is ``x * scale + shift`` (then flattened) before the first layer: a
        #: normalization in the model's code, folded into the first layer's weights and bias so
        #: that the raw input's zeros (an image's background) are skipped.
        self.scale, self.shift, self.flatten = float(scale), float(shift), bool(flatten)
        self._plan: tuple[Any, ...] | None = None

    def _current(self) -> bool:
        if self._plan is None:
            return False
        return all(
            m._buffers["values"] is t and t._version == v and m._parameters.get("bias") is b
            for m, (t, v, b) in zip(self.layers, self._plan[0], strict=True)
        )

    def _arrays(self) -> tuple[Any, ...]:
        if not self._current():
            ptrs, idx, vals, biases, shapes = [], [], [], [], []
            for i, (layer, relu) in enumerate(zip(self.layers, self.relu, strict=True)):
                w = CSCMatrix.from_csr(matrix(layer))  # type: ignore[arg-type]
                bias = layer.bias
                b = np.zeros(w.rows, np.float32) if bias is None else bias.detach().float().numpy()
                values = w.values
                if i == 0 and (self.scale != 1.0 or self.shift != 0.0):
                    # W (a x + c) + b = (a W) x + (b + c W 1): same zeros, new bias.
                    rows_sum = np.zeros(w.rows, np.float64)
                    np.add.at(rows_sum, w.indices, values.astype(np.float64))
                    b = (b + self.shift * rows_sum).astype(np.float32)
                    values = (values * self.scale).astype(np.float32)
                ptrs.append(w.indptr)
                idx.append(w.indices)
                vals.append(values)
                biases.append(b)
                shapes.append((w.cols, w.rows, int(relu)))
            n_ptr, n_val = sum(p.size for p in ptrs), sum(v.size for v in vals)
            plan, p0, i0, v0, b0 = [], 0, n_ptr, 0, n_val
            for p, v, bias_, shape in zip(ptrs, vals, biases, shapes, strict=True):
                plan.append((p0, i0, v0, b0, *shape))
                p0, i0, v0, b0 = p0 + p.size, i0 + v.size, v0 + v.size, b0 + bias_.size
            width = max(max(fan_in, fan_out) for fan_in, fan_out, _ in shapes)
            arrays = (
                np.asarray(plan, dtype=np.int64),
                np.concatenate([*ptrs, *idx]).astype(np.int32),
                np.concatenate([*vals, *biases]).astype(np.float32),
                np.empty(2 * width, np.float32),
            )
            key = [(m._buffers["values"], m._buffers["values"]._version, m._parameters.get("bias"))
                   for m in self.layers]  # fmt: skip
            self._plan = (key, arrays, int(shapes[-1][1]))
        return self._plan[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        if (
            x.dim() == 2
            and x.shape[0] <= FEW_ROWS
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
        ):
            plan, ints, floats, scratch = self._arrays()
            out = np.empty((x.shape[0], self._plan[2]), np.float32)  # type: ignore[index]
            _run_csc(plan, ints, floats, x.contiguous().numpy(), out, scratch)
            return torch.from_numpy(out)
        x = x * self.scale + self.shift if (self.scale, self.shift) != (1.0, 0.0) else x
        for layer, relu in zip(self.layers, self.relu, strict=True):
            x = layer(x)
            x = torch.relu(x) if relu else x
        return x


def _is_csr_linear(modules: dict[str, nn.Module], node: fx.Node) -> bool:
    m = modules.get(str(node.target)) if node.op == "call_module" else None
    return isinstance(m, SparseLinear) and m.mode == "csr" and m.executor == "native"


def _is_relu(modules: dict[str, nn.Module], node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    inplace = node.kwargs.get("inplace", False)
    return node.op == "call_function" and node.target in _RELUS and not inplace


def _runs(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[list[fx.Node]]:
    """Maximal chains ``linear (relu) linear (relu) ...`` whose inner values have one reader."""
    runs, taken = [], set()
    for node in graph.nodes:
        if node in taken or not _is_csr_linear(modules, node):
            continue
        run, cur = [node], node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            relu = _is_relu(modules, nxt) and not _is_relu(modules, cur)
            if not (relu or (_is_csr_linear(modules, nxt) and nxt.args[0] is cur)):
                break
            run.append(nxt)
            cur = nxt
        if sum(_is_csr_linear(modules, n) for n in run) >= 2:
            runs.append(run)
            taken.update(run)
    return runs


def _input_prologue(
    run_start: fx.Node, modules: dict[str, nn.Module]
) -> tuple[fx.Node, float, float, bool]:
    """The ops before a run that the run can absorb: a flatten and, before it, arithmetic with
    constant numbers (a normalization ``(x - mean) / std``), each read only by the next. Returns
    (the run's new input, scale, shift, flatten) for ``input * scale + shift``."""
    node = run_start.args[0]
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return run_start.args[0], 1.0, 0.0, False  # type: ignore[return-value]
    m = modules.get(str(node.target)) if node.op == "call_module" else None
    is_flatten = isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1)
    is_flatten = is_flatten or (
        node.op == "call_function" and node.target is torch.flatten and node.args[1:] == (1,)
    )
    if not is_flatten:
        return run_start.args[0], 1.0, 0.0, False  # type: ignore[return-value]
    start, scale, shift, _ = constant_affine(node.args[0])
    return start, scale, shift, True


def unchain(model: nn.Module) -> nn.Module:
    """The eager model a linked GraphModule was traced from, or ``model`` itself."""
    # Unwrapped already when the int8 chain's undo (which unwraps any linked GraphModule) ran.
    return unwrap_linked(model, SPARSE_CHAIN_ATTR)


def chain_sparse(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Link runs of CSR sparse linears (see the module docstring): ``(model to run, number of
    layers linked, why none)``."""
    if model.__dict__.get(EAGER_ATTR) is not None:
        return model, 0, "the model is linked already"
    if sum(isinstance(m, SparseLinear) for m in model.modules()) < 2:
        return model, 0, "fewer than two sparse linears"
    graph, why = trace_layers(model)
    if graph is None:
        return model, 0, why
    modules = dict(model.named_modules())
    runs = _runs(graph, modules)
    if not runs:
        return model, 0, "no two CSR linears follow each other"
    root = nn.Module()
    for name, m in model.named_children():
        root.add_module(name, m)
    linked = 0
    for i, run in enumerate(runs):
        layers, relu = [], []
        for node in run:
            if _is_csr_linear(modules, node):
                layers.append(modules[str(node.target)])
                relu.append(False)
            else:
                relu[-1] = True
        name = f"_sparse_run{i}"
        start, scale, shift, flatten = _input_prologue(run[0], modules)
        root.add_module(name, SparseRun(layers, relu, scale, shift, flatten))
        prologue = []
        node = run[0].args[0]
        while isinstance(node, fx.Node) and node is not start:
            prologue.append(node)
            node = node.args[0]
        with graph.inserting_before(run[0]):
            fused = graph.call_module(name, (start,))
        run[-1].replace_all_uses_with(fused)
        for node in [*reversed(run), *prologue]:
            graph.erase_node(node)
        linked += len(layers)
    graph.lint()
    linked_model = wrap_linked(model, root, graph, SPARSE_CHAIN_ATTR)
    return linked_model, linked, ""


register_link("sparse_chain", chain_sparse, unchain)

__all__ = ["SparseRun", "chain_sparse", "unchain"]
