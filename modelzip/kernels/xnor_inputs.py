"""XNOR convolutions that read the 2×2 max pool and hardtanh before them in their own pass.

An XNOR convolution needs of its input only the signs and XNOR-Net's ``K`` map (the mean ``|x|``
over channels, box-filtered: :func:`~modelzip.kernels.layers.xnor_input_scale`), both made in one
pass that packs the bits (:func:`~modelzip.kernels.binary.sign_im2col`). When its input is
``hardtanh(max_pool2d(x, 2))``, as in XNOR-Net's block order (Rastegari et al. 2016, Fig. 2: the
pooling before the binary activation) and the wide LeNet-5, that pass can read ``x`` itself:
the maximum of each 2×2 window and ``min(|x|, 1)`` cost a few vector ops per pixel there, while
PyTorch's pooling and hardtanh each write the image out and read it back. On the wide LeNet-5 at
batch 64 (one core) the pool alone took 0.42 ms of the XNOR model's 2.7 ms.

The signs are unchanged (hardtanh keeps every sign, and the pooled maximum is the same), so the
packed bits are identical and only ``K``'s summation order differs. A deployed model so linked
runs as a ``torch.fx.GraphModule`` of its eager model that skips the pool and hardtanh nodes
and calls the convolution on their input; the eager model is kept (``_modelzip_eager``) for
:func:`modelzip.deploy.trainable` and saving, and a deployed file records the link and makes it
again on load (as the int8 and sparse chains do).
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from modelzip.core.compact_source import XNOR_INPUTS_ATTR
from modelzip.core.model_links import (
    EAGER_ATTR,
    module_calls,
    register_link,
    trace_layers,
    unwrap_linked,
    wrap_linked,
)
from modelzip.kernels.layers import READS_ATTR, BinaryConv2d


def _module(modules: dict[str, nn.Module], node: Any) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return modules.get(str(node.target))
    return None


def _is_pool2x2(m: nn.Module | None) -> bool:
    """A 2×2 max pooling of stride 2 (floor mode, no padding, no indices)."""
    if not isinstance(m, nn.MaxPool2d) or m.return_indices or m.ceil_mode:
        return False
    two = (2, (2, 2))
    plain = m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1))
    return plain and m.kernel_size in two and m.stride in (*two, None)


def _is_unit_hardtanh(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Hardtanh) and m.min_val == -1.0 and m.max_val == 1.0


def _only_reader(node: fx.Node, reader: fx.Node) -> bool:
    return list(node.users) == [reader] and len(node.args) == 1 and not node.kwargs


def _absorb(conv: fx.Node, modules: dict[str, nn.Module]) -> tuple[list[fx.Node], bool, bool]:
    """The hardtanh and pool nodes ``conv`` can read through (nearest first), and which."""
    skipped: list[fx.Node] = []
    node, clamp, pool = conv.args[0], False, False
    if _is_unit_hardtanh(_module(modules, node)) and _only_reader(node, conv):  # type: ignore[arg-type]
        skipped.append(node)  # type: ignore[arg-type]
        clamp, node = True, node.args[0]  # type: ignore[union-attr]
    reader = skipped[-1] if skipped else conv
    if _is_pool2x2(_module(modules, node)) and _only_reader(node, reader):  # type: ignore[arg-type]
        skipped.append(node)  # type: ignore[arg-type]
        pool = True
    return skipped, pool, clamp


def unlink(model: nn.Module) -> nn.Module:
    """The eager model a linked GraphModule was traced from (its convolutions reading their
    input as it comes again), or ``model`` itself."""
    model = unwrap_linked(model, XNOR_INPUTS_ATTR)
    for m in model.modules():
        m.__dict__.pop(READS_ATTR, None)
    return model


def link_xnor_inputs(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Let each XNOR convolution read the 2×2 max pool and unit hardtanh before it (see the
    module docstring): ``(model to run, convolutions linked, why none)``."""
    if model.__dict__.get(EAGER_ATTR) is not None:
        return model, 0, "the model is linked already"
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d) and m.mode == "xnor"]
    if not convs:
        return model, 0, "no XNOR convolution"
    graph, why = trace_layers(model)
    if graph is None:
        return model, 0, why
    modules = dict(model.named_modules())
    calls = module_calls(graph)
    reads: dict[str, tuple[bool, bool]] = {}
    for node in list(graph.nodes):
        conv = _module(modules, node)
        if not isinstance(conv, BinaryConv2d) or conv.mode != "xnor" or node.kwargs:
            continue
        # A layer called twice (shared) reads differently at each call: left as it is.
        if calls[str(node.target)] != 1 or len(node.args) != 1:
            continue
        skipped, pool, clamp = _absorb(node, modules)
        if not skipped:
            continue
        node.args = (skipped[-1].args[0],)
        for n in skipped:
            graph.erase_node(n)
        reads[str(node.target)] = (pool, clamp)
    if not reads:
        return model, 0, "no XNOR convolution reads a 2x2 max pool or a hardtanh"
    graph.lint()
    for name, read in reads.items():
        modules[name].__dict__[READS_ATTR] = read
    linked = wrap_linked(model, model, graph, XNOR_INPUTS_ATTR)
    return linked, len(reads), ""


register_link("xnor_inputs", link_xnor_inputs, unlink)

__all__ = ["READS_ATTR", "link_xnor_inputs", "unlink"]
