"""Properties every quantizer, pruner and decomposer must have, driven by the registry.

For each registered method of those families, over random layers (odd and single-element
sizes) and weights (zeros, constants, denormals, huge magnitudes, mixed signs): the example
config either replaces the layer with one that runs, keeps the output shape and gives finite
outputs, or skips it with a reason in the Report. NaN and Inf are refused with a ModelError that
names the tensor; float64 and bfloat16 layers are either handled in their own dtype or skipped
with a reason that names the dtype.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from weight_strategies import (
    PROFILE,
    PROPERTY_FAMILIES,
    compress_layer,
    conv_layers,
    linear_layers,
    methods_of,
    sample_for,
)

import modelzip
from modelzip.core.errors import ModelError
from modelzip.core.registry import get_method

# The compact and joint families get the same checks (their own properties are in their tests).
METHODS = [m for family in (*PROPERTY_FAMILIES, "compact", "joint") for m in methods_of(family)]
RECURRENT = {"LSTM", "GRU", "RNN"}


def _layers_for(method: str) -> st.SearchStrategy[nn.Module]:
    types = set(get_method(method).config_type.default_types)
    if types & RECURRENT:
        return st.builds(lambda i, h: nn.LSTM(i, h).eval(), st.integers(1, 9), st.integers(1, 12))
    return st.one_of(linear_layers(), conv_layers())


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        y = model(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("method", METHODS)
@PROFILE
@given(data=st.data())
def test_example_handles_or_skips_every_layer(method, data):
    layer = data.draw(_layers_for(method))
    try:
        new, report = compress_layer(layer, get_method(method).example)
    except ModelError as e:
        # A whole-model method may refuse a model it cannot analyse, naming the layer.
        assert get_method(method).scope == "model" and "'0'" in str(e), e
        return
    x = sample_for(layer)
    if new is None:
        for skip in report.skipped:
            assert skip.name == "0" and skip.reason, skip
        return
    y_ref, y = _output(nn.Sequential(layer), x), _output(nn.Sequential(new), x)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    if torch.isfinite(y_ref).all() and y_ref.abs().max() < 1e15:
        w = layer.weight.detach() if hasattr(layer, "weight") else torch.zeros(1)
        assert torch.isfinite(y).all(), (
            f"{method} made finite outputs non-finite; weights {w.flatten()[:12].tolist()}, "
            f"|w| in [{w.abs().min():g}, {w.abs().max():g}]"
        )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_naming_the_tensor(method, bad):
    recurrent = set(get_method(method).config_type.default_types) & RECURRENT
    layer = nn.Sequential(nn.LSTM(4, 3) if recurrent else nn.Linear(5, 3))
    with torch.no_grad():
        next(layer.parameters()).view(-1)[0] = bad
    with pytest.raises(ModelError, match=r"'0\.weight.*' contains (NaN|Inf)"):
        modelzip.compress(layer, get_method(method).example, measure=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_are_handled_or_refused_by_name(method, dtype):
    torch.manual_seed(0)
    types = set(get_method(method).config_type.default_types)
    if types & RECURRENT:
        layer: nn.Module = nn.LSTM(6, 8)
    else:
        layer = nn.Linear(16, 8) if "Linear" in types else nn.Conv2d(4, 8, 3)
    layer = layer.to(dtype).eval()
    x = sample_for(layer).to(dtype)
    try:
        small, report = modelzip.compress(
            nn.Sequential(layer), get_method(method).example, sample=x, measure=False
        )
    except ModelError as e:
        assert str(dtype) in str(e) or "'0'" in str(e), e
        return
    # A layer float32 compresses is compressed, or skipped naming the dtype; a skip float32 makes
    # too (a single layer's channels reach the model's output) is no dtype's doing.
    _, ref = modelzip.compress(
        nn.Sequential(copy.deepcopy(layer).float()),
        get_method(method).example,
        sample=x.float(),
        measure=False,
    )
    as_float = {(s.name, s.reason) for s in ref.skipped}
    for skip in report.skipped:
        assert str(dtype) in skip.reason or (skip.name, skip.reason) in as_float, skip
    if report.layers:
        y = _output(small, x)
        assert y.dtype == dtype and torch.isfinite(y.float()).all()
