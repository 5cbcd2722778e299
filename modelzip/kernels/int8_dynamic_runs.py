"""Dynamic int8 linears on the native kernel linked: the ReLUs after them run in the kernel's
output, and runs of them run as one call.

A ReLU between two dynamic int8 linears is a pass of its own over the float activation: on the
MLP 1024-4096-4096-1024 at batch 64 (2 threads, a passive OpenMP wait) each took 0.09 ms of the
model's 4.3, most of it waking the second thread. The native kernel (:mod:`.int8_gemv`) writes
each output once anyway, so it clamps it at 0 there, as the int8 chain's static layers do in
their requantization (:mod:`modelzip.quantize.int8_bn_fold`).

At batch 1 the Python between the kernel calls costs more than its own instructions: each call
streams megabytes of codes through the caches and the layer's Python (module call, engine state,
dispatch) then runs from cold caches, about 35 µs a layer on that MLP (0.1 ms of 0.5), where a
loop of the bare kernel calls paid nothing. So a run of such layers, each output read only by the
next (ReLUs fused), becomes one :class:`Int8Run`, whose forward is one native call over all of
them (``int8_gemv_chain``) for the inputs the kernel takes, and the layers one by one (each
fused ReLU after its layer) otherwise; a single layer with a fused ReLU is a run of one. The
ReLUs are the run's, not notes on the layers: a layer replaced later keeps its ReLU.

A linked model runs as a ``torch.fx.GraphModule`` of its eager model (sharing its layers) without
those ReLU nodes and with each run as one module; the eager model is kept (``_modelzip_eager``)
for :func:`modelzip.deploy.trainable` and saving, and a deployed file records the link and makes
it again on load (as the int8 and sparse chains do). The outputs are the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from modelzip.core.compact_source import INT8_RUNS_ATTR
from modelzip.core.model_links import (
    EAGER_ATTR,
    is_relu,
    module_calls,
    register_link,
    trace_layers,
    unwrap_linked,
    wrap_linked,
)
from modelzip.kernels import int8_gemv
from modelzip.kernels.int8 import ENGINE_ATTR


def _fuses(m: nn.Module | None) -> bool:
    """A dynamic int8 linear on the native kernel (whose engine takes the ReLU)."""
    return (
        m is not None
        and getattr(m, "activations", None) == "dynamic"
        and m.__dict__.get(ENGINE_ATTR) == int8_gemv.ENGINE
        and getattr(m, "codes", None) is not None
        and m.codes.dim() == 2
    )


class Int8Run(nn.Module):
    """Dynamic int8 linears on the native kernel (each with its fused ReLU, if any) run as one
    native call; the layers are shared with the eager model, not copied. Inputs the kernel does
    not take (more rows than :func:`~modelzip.kernels.int8_gemv.row_limit`, autograd, another
    dtype, no native build, a forward hook on a layer, a layer since put on another engine) go
    through the layers one by one."""

    def __init__(self, layers: list[nn.Module], relu: list[bool]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        #: Whether a ReLU follows each layer (fused: in the kernel's output, or after the layer
        #: on the layer-by-layer path). Kept here, not on the layers: a later deploy may replace
        #: a layer (every alias of it) by another form, and the ReLU must stay.
        self.relu = tuple(bool(r) for r in relu)
        self._args: tuple[Any, tuple[Any, ...], tuple[list[Any], ...] | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A copy or pickle makes its kernel arguments again (they hold the loaded build).
        return {**super().__getstate__(), "_args": None}

    def _hooked(self) -> bool:
        """Whether a forward hook waits on a layer (deploy records layer inputs so, users
        inspect them): the layers are then called one by one."""
        from torch.nn.modules import module as torch_module

        return bool(
            torch_module._global_forward_hooks
            or torch_module._global_forward_pre_hooks
            or any(m._forward_hooks or m._forward_pre_hooks for m in self.layers)
        )

    def _key(self) -> tuple[Any, ...]:
        """What the kernel arguments were made from: each layer's tensors (their versions) and
        engine. Cheaper than asking every layer for its engine state: this code runs right after
        megabytes of codes went through the caches."""
        return tuple(
            (t, t._version, m.__dict__.get(ENGINE_ATTR))
            for m in self.layers
            for t in (m.codes, m.scale, m.bias)
            if t is not None
        )

    def _native_args(self, lib: Any) -> tuple[list[Any], ...] | None:
        """The kernel's arguments, or None when a layer no longer runs on the native kernel
        (a later deploy replaced it, every alias of it included, by another engine's)."""
        key = self._key()
        if self._args is None or self._args[0] is not lib or not _same(self._args[1], key):
            args = self._make_args(lib) if all(_fuses(m) for m in self.layers) else None
            self._args = (lib, key, args)
        return self._args[2]

    def _make_args(self, lib: Any) -> tuple[list[Any], ...]:
        packed, colsum, scale, bias, outs = [], [], [], [], []
        for layer in self.layers:
            # The layer's own engine state (rebuilt when its tensors change), as its call uses.
            run = layer._engine_state(  # type: ignore[operator]
                lambda layer=layer: int8_gemv.NativeGemvLinear(*layer._weights(layer.bias))
            )[0]
            _, p, c, b = run._native_state(lib)
            packed.append(p)
            colsum.append(c)
            scale.append(run.scale)
            bias.append(b)
            outs.append(int(run.codes.shape[0]))
        return packed, colsum, scale, bias, outs, list(self.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = int8_gemv.native()
        limit = int8_gemv.row_limit() if lib is not None else 0
        args = (
            self._native_args(lib)
            if lib is not None
            and not self._hooked()
            and x.dim() == 2
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and (limit is None or x.shape[0] <= limit)
            else None
        )
        if args is not None:
            return lib.int8_gemv_chain(x.contiguous(), *args, int8_gemv.PATH)
        for layer, relu in zip(self.layers, self.relu, strict=True):
            x = layer(x)
            x = torch.relu(x) if relu else x
        return x


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Two keys of :meth:`Int8Run._key`: the same tensors (by identity: ``==`` on tensors compares
    their values), versions and engines."""
    return len(a) == len(b) and all(
        x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a, b, strict=True)
    )


def _fused_relus(graph: fx.Graph, modules: dict[str, nn.Module], calls: dict[str, int]) -> set[str]:
    """Drop each ReLU whose input is only the output of a native dynamic int8 linear called
    once; returns those linears' names (their runs apply the ReLU)."""
    fused: set[str] = set()
    for node in list(graph.nodes):
        if not is_relu(node, modules) or len(node.args) != 1:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        name = str(src.target)
        # A layer called twice (shared) would clamp at its other call too: left as it is.
        if not _fuses(modules.get(name)) or calls.get(name, 0) != 1:
            continue
        node.replace_all_uses_with(src)
        graph.erase_node(node)
        fused.add(name)
    return fused


def _runs(
    graph: fx.Graph, modules: dict[str, nn.Module], calls: dict[str, int], relus: set[str]
) -> list[list[fx.Node]]:
    """Maximal chains of native dynamic int8 linears, each called once, whose outputs only the
    next one reads: those of two layers or more, and single layers with a fused ReLU."""

    def layer(node: Any) -> bool:
        return (
            isinstance(node, fx.Node)
            and node.op == "call_module"
            and _fuses(modules.get(str(node.target)))
            and calls.get(str(node.target), 0) == 1
            and len(node.args) == 1
            and not node.kwargs
        )

    runs, taken = [], set()
    for node in graph.nodes:
        if node in taken or not layer(node):
            continue
        run = [node]
        while len(run[-1].users) == 1:
            nxt = next(iter(run[-1].users))
            if not layer(nxt) or nxt.args[0] is not run[-1]:
                break
            run.append(nxt)
        if len(run) >= 2 or str(run[0].target) in relus:
            runs.append(run)
            taken.update(run)
    return runs


def link_int8_runs(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Fuse the ReLUs after native dynamic int8 linears and run runs of them as one call (see
    the module docstring): ``(model to run, ReLUs fused + layers in runs, why none)``. The linked
    model's :data:`~modelzip.core.compact_source.INT8_RUNS_ATTR` says what was linked."""
    if model.__dict__.get(EAGER_ATTR) is not None:
        return model, 0, "the model is linked already"
    if not any(_fuses(m) for m in model.modules()):
        return model, 0, "no dynamic int8 linear on the native kernel"
    graph, why = trace_layers(model)
    if graph is None:
        return model, 0, why
    modules = dict(model.named_modules())
    calls = module_calls(graph)
    fused = _fused_relus(graph, modules, calls)
    runs = _runs(graph, modules, calls, fused)
    if not runs:
        return model, 0, "no ReLU or next layer reads only a native dynamic int8 linear"
    root = nn.Module()
    for name, m in model.named_children():
        root.add_module(name, m)
    for i, run in enumerate(runs):
        name = f"_int8_run{i}"
        names = [str(n.target) for n in run]
        root.add_module(name, Int8Run([modules[n] for n in names], [n in fused for n in names]))
        with graph.inserting_before(run[0]):
            one = graph.call_module(name, run[0].args)
        run[-1].replace_all_uses_with(one)
        for node in reversed(run):
            graph.erase_node(node)
    graph.lint()
    linked = wrap_linked(model, root, graph, INT8_RUNS_ATTR)
    # The GraphModule holds only the modules its graph calls: the joined layers are put back
    # under their own names, first, so that names (a report's, get_submodule's) stay the
    # model's.
    rest = dict(linked._modules)
    linked._modules.clear()
    for name, m in [*model.named_children(), *rest.items()]:
        linked._modules.setdefault(name, m)
    joined, relus = sum(len(r) for r in runs), len(fused)
    what = []
    if relus:
        what.append(f"{relus} ReLU{'s' if relus != 1 else ''} run in the layers before")
    what.append(f"{joined} layer{'s' if joined > 1 else ''} run as {len(runs)} call"
                + ("s" if len(runs) > 1 else ""))  # fmt: skip
    linked.__dict__[INT8_RUNS_ATTR] = "; ".join(what)
    return linked, relus + joined, ""


def unlink(model: nn.Module) -> nn.Module:
    """The eager model a linked GraphModule was traced from (its ReLUs run again), or ``model``
    itself."""
    return unwrap_linked(model, INT8_RUNS_ATTR)


register_link("int8_runs", link_int8_runs, unlink)

__all__ = ["Int8Run", "link_int8_runs", "unlink"]
