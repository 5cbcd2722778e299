"""Hypothesis strategies shared by the reliability tests: layers, weights and the profile."""

from __future__ import annotations

import os

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import modelzip
from modelzip.core.registry import SkipLayer, get_method, list_methods

#: ``ci`` in ``make test``, ``fuzz`` in ``make fuzz`` (profiles registered in conftest.py).
PROFILE = settings.get_profile(os.environ.get("MODELZIP_HYPOTHESIS", "ci"))

#: Families whose every method needs a property test of its own (see test_properties_*).
PROPERTY_FAMILIES = ("quantize", "prune", "decompose")

FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
SPECIAL = st.sampled_from([0.0, -0.0, 1e-40, -1e-40, 1.2e-38, 1e20, -1e20, 1.0, -1.0])
VALUES = st.one_of(FINITE, SPECIAL)
#: How a weight tensor is filled: random values, all zeros, one constant, denormals, huge ones.
KINDS = st.sampled_from(["random", "zeros", "constant", "denormal", "huge", "mixed"])


def methods_of(family: str) -> list[str]:
    return [n for n in list_methods() if get_method(n).family == family]


@st.composite
def weights(draw: st.DrawFn, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor of ``shape`` of one of :data:`KINDS`."""
    kind = draw(KINDS)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "constant":
        return torch.full(shape, draw(st.sampled_from([0.5, -3.0, 1e-3])))
    if kind == "denormal":
        return torch.full(shape, 1e-40) * torch.sign(torch.randn(shape, generator=_gen(draw)))
    if kind == "huge":
        return torch.randn(shape, generator=_gen(draw)) * 1e20
    if kind == "mixed":
        return torch.from_numpy(draw(arrays(np.float32, shape, elements=VALUES)))
    return torch.randn(shape, generator=_gen(draw)) * draw(st.sampled_from([1e-3, 0.1, 1.0]))


def _gen(draw: st.DrawFn) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


@st.composite
def linear_layers(draw: st.DrawFn, max_features: int = 24) -> nn.Linear:
    """An ``nn.Linear`` of random (incl. single-element) size holding :func:`weights`."""
    fan_in, fan_out = draw(st.integers(1, max_features)), draw(st.integers(1, max_features))
    layer = nn.Linear(fan_in, fan_out, bias=draw(st.booleans()))
    with torch.no_grad():
        layer.weight.copy_(draw(weights((fan_out, fan_in))))
    return layer.eval()


@st.composite
def conv_layers(draw: st.DrawFn) -> nn.Conv2d:
    """An ``nn.Conv2d`` with odd or even channels and kernels, holding :func:`weights`."""
    cin, cout = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    k = draw(st.sampled_from([1, 2, 3]))
    layer = nn.Conv2d(cin, cout, k, padding=draw(st.integers(0, 1)), bias=draw(st.booleans()))
    with torch.no_grad():
        layer.weight.copy_(draw(weights((cout, cin, k, k))))
    return layer.eval()


def sample_for(layer: nn.Module, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if isinstance(layer, nn.Conv2d):
        return torch.randn(batch, layer.in_channels, 6, 6, generator=g)
    if isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN)):
        return torch.randn(3, batch, layer.input_size, generator=g)
    return torch.randn(batch, layer.in_features, generator=g)


def compress_layer(layer: nn.Module, config) -> tuple[nn.Module | None, object]:
    """Compress a one-layer model; the replacement layer (None if skipped) and the Report."""
    model = nn.Sequential(layer)
    small, report = modelzip.compress(
        model, config, sample=sample_for(layer), measure=False, deploy=False
    )
    new = small[0] if report.layers else None
    return new, report


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a (compressed) layer computes with."""
    dense = layer.to_dense() if hasattr(layer, "to_dense") else layer
    return dense.weight.detach()


__all__ = [
    "PROFILE",
    "PROPERTY_FAMILIES",
    "SkipLayer",
    "compress_layer",
    "conv_layers",
    "dense_weight",
    "linear_layers",
    "methods_of",
    "sample_for",
    "weights",
]
