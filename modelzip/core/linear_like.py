"""Layers that are a Linear by the role of their weight, whatever their class.

Hugging Face's GPT-2 computes ``y = x @ W + b`` with ``transformers.pytorch_utils.Conv1D``, whose
weight is stored ``(in_features, out_features)``: a Linear with a transposed weight. A method that
knew only ``nn.Linear`` by its class left every such layer alone. Here a layer is Linear-like when
it is an ``nn.Linear`` (or a subclass: ``NonDynamicallyQuantizableLinear``, a library's own
Linear) or one of the transposed-weight classes of :data:`TRANSPOSED_LINEARS`, checked by its
weight's shape against its declared width; :func:`linear_view` gives the equivalent ``nn.Linear``
a method works on, and that layer (or what the method makes of it) replaces the original.
"""

from __future__ import annotations

import torch
from torch import nn

#: Classes (``module.qualname``) whose forward is ``x @ weight + bias`` with ``weight`` of shape
#: ``(in_features, out_features)`` and the output width in ``nf``.
TRANSPOSED_LINEARS = ("transformers.pytorch_utils.Conv1D", "transformers.modeling_utils.Conv1D")


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a known transposed-weight Linear (GPT-2's ``Conv1D``)."""
    cls = type(module)
    if f"{cls.__module__}.{cls.__qualname__}" not in TRANSPOSED_LINEARS:
        return False
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return (
        isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and weight.shape[1] == getattr(module, "nf", None)
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape == (weight.shape[1],)))
    )


def is_linear_like(module: nn.Module) -> bool:
    """An ``nn.Linear`` of any subclass, or a transposed-weight Linear."""
    return isinstance(module, nn.Linear) or is_transposed_linear(module)


def layer_kinds(module: nn.Module) -> set[str]:
    """The type names a selector matches ``module`` by: its class, what it stands for, and
    ``Linear`` for a Linear-like layer."""
    kinds = {type(module).__name__, getattr(module, "stands_for", "")}
    if is_linear_like(module):
        kinds.add("Linear")
    return kinds


def linear_view(module: nn.Module) -> nn.Module:
    """The ``nn.Linear`` computing what a transposed-weight Linear computes (a copy of its
    weight, transposed; same device, dtype and ``requires_grad``); any other module itself."""
    if not is_transposed_linear(module):
        return module
    weight, bias = module.weight, module.bias
    linear = nn.Linear(
        weight.shape[0],
        weight.shape[1],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if bias is not None:
            linear.bias.copy_(bias)
    linear.weight.requires_grad_(weight.requires_grad)
    linear.train(module.training)
    return linear
