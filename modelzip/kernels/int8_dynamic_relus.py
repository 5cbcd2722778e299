"""ReLUs after dynamic int8 linears on the native kernel, run in the kernel's output.

A ReLU between two dynamic int8 linears is a pass of its own over the float activation: on the
MLP 1024-4096-4096-1024 at batch 64 (2 threads, a passive OpenMP wait) each took 0.09 ms of the
model's 4.3, most of it waking the second thread. The native kernel (:mod:`.int8_gemv`) writes
each output once anyway, so it can clamp it at 0 there, as the int8 chain's static layers do in
their requantization (:mod:`modelzip.quantize.int8_bn_fold`).

A linked model runs as a ``torch.fx.GraphModule`` of its eager model without those ReLU nodes,
each linear carrying :data:`~modelzip.kernels.int8.RELU_ATTR`; the eager model is kept
(``_modelzip_eager``) for :func:`modelzip.deploy.trainable` and saving, and a deployed file
records the link and makes it again on load (as the int8 and sparse chains do). The outputs are
the same numbers: ``max(v, 0)`` of the same ``v``.
"""

from __future__ import annotations

from torch import fx, nn

from modelzip.core.compact_source import INT8_RELUS_ATTR
from modelzip.core.model_links import (
    EAGER_ATTR,
    is_relu,
    module_calls,
    register_link,
    trace_layers,
    unwrap_linked,
    wrap_linked,
)
from modelzip.kernels.int8 import ENGINE_ATTR, RELU_ATTR
from modelzip.kernels.int8_gemv import ENGINE


def _fuses(m: nn.Module | None) -> bool:
    """A dynamic int8 linear on the native kernel (whose engine takes the ReLU)."""
    return (
        m is not None
        and getattr(m, "activations", None) == "dynamic"
        and m.__dict__.get(ENGINE_ATTR) == ENGINE
        and getattr(m, "codes", None) is not None
        and m.codes.dim() == 2
    )


def link_int8_relus(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Fuse each ReLU whose input is only the output of a native dynamic int8 linear (called
    once) into it: ``(model to run, ReLUs fused, why none)``."""
    if model.__dict__.get(EAGER_ATTR) is not None:
        return model, 0, "the model is linked already"
    if not any(_fuses(m) for m in model.modules()):
        return model, 0, "no dynamic int8 linear on the native kernel"
    graph, why = trace_layers(model)
    if graph is None:
        return model, 0, why
    modules = dict(model.named_modules())
    calls = module_calls(graph)
    fused: list[str] = []
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
        fused.append(name)
    if not fused:
        return model, 0, "no ReLU reads only a native dynamic int8 linear"
    graph.lint()
    for name in fused:
        modules[name].__dict__[RELU_ATTR] = True
    return wrap_linked(model, model, graph, INT8_RELUS_ATTR), len(fused), ""


def unlink(model: nn.Module) -> nn.Module:
    """The eager model a linked GraphModule was traced from (its ReLUs run again), or ``model``
    itself."""
    model = unwrap_linked(model, INT8_RELUS_ATTR)
    for m in model.modules():
        if _fuses(m):
            m.__dict__.pop(RELU_ATTR, None)
    return model


register_link("int8_relus", link_int8_relus, unlink)

__all__ = ["link_int8_relus", "unlink"]
