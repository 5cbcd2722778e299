"""Properties of every decomposer: exact reconstruction at full rank, ``to_dense(from_dense(W))
≈ W``, and the Eckart–Young error of a truncated SVD.

Each method of the ``decompose`` family must have a full-rank config in :data:`FULL_RANK`;
:func:`test_every_decomposer_has_a_property` fails, naming it, when a new one does not.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from weight_strategies import (
    PROFILE,
    compress_layer,
    conv_layers,
    dense_weight,
    linear_layers,
    methods_of,
    sample_for,
    weights,
)

from modelzip.core.registry import get_method
from modelzip.decompose.configs import (
    CPConfig,
    HTConfig,
    RNNHTConfig,
    RNNLowRankConfig,
    RNNTTConfig,
    SpatialConfig,
    SVDConfig,
    TTConfig,
    Tucker2Config,
    TuckerTensorizedConfig,
)

BIG = 10**6  # ranks are capped at the exact rank of the layer's shape
#: The setting of each decomposer that must reconstruct the layer exactly.
FULL_RANK = {
    "svd": SVDConfig(energy=1.0),
    "lowrank_spatial": SpatialConfig(energy=1.0),
    "tucker2": Tucker2Config(rank=BIG),
    "cp": CPConfig(rank=BIG),
    "tt": TTConfig(rank=BIG),
    "ht": HTConfig(rank=BIG),
    "tucker_tensorized": TuckerTensorizedConfig(rank=BIG),
    "rnn_lowrank": RNNLowRankConfig(energy=1.0),
    "rnn_tt": RNNTTConfig(rank=BIG),
    "rnn_ht": RNNHTConfig(rank=BIG),
}
RECURRENT = {"LSTM", "GRU", "RNN"}


def test_every_decomposer_has_a_property():
    missing = [m for m in methods_of("decompose") if m not in FULL_RANK]
    assert not missing, f"decomposers without a full-rank property in {__file__}: {missing}"


@st.composite
def _lstm(draw: st.DrawFn) -> nn.LSTM:
    layer = nn.LSTM(draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(draw(weights(tuple(p.shape))))
    return layer.eval()


def _layers(method: str) -> st.SearchStrategy[nn.Module]:
    types = set(get_method(method).config_type.default_types)
    if types & RECURRENT:
        return _lstm()
    options = []
    if "Linear" in types:
        options.append(linear_layers(max_features=16))
    if "Conv2d" in types:
        options.append(conv_layers())
    return st.one_of(options)


def _moderate(layer: nn.Module) -> bool:
    # Decompositions run in float64 and store float32: relative accuracy, not overflow, is tested.
    return all(p.abs().max() < 1e15 for p in layer.parameters())


@pytest.mark.parametrize("method", sorted(FULL_RANK))
@PROFILE
@given(data=st.data())
def test_full_rank_reconstructs_exactly(method, data):
    layer = data.draw(_layers(method))
    new, report = compress_layer(layer, FULL_RANK[method])
    if new is None:
        assert all(s.reason for s in report.skipped)
        return
    if not _moderate(layer):
        return
    dense = new.to_dense()
    for (name, want), got in zip(layer.named_parameters(), dense.parameters(), strict=True):
        scale = float(want.detach().abs().max())
        assert got.shape == want.shape, name
        assert (got - want).abs().max() <= 1e-4 * scale + 1e-30, name
    x = sample_for(layer)
    with torch.inference_mode():
        want_y, got_y = layer(x), new(x)
    if isinstance(want_y, tuple):
        # Saturating gates amplify weight rounding unevenly: the weights were compared above.
        assert got_y[0].shape == want_y[0].shape and torch.isfinite(got_y[0]).all()
        return
    scale = float(want_y.abs().max())
    torch.testing.assert_close(got_y, want_y, rtol=1e-3, atol=1e-4 * scale + 1e-6)


@PROFILE
@given(layer=linear_layers(max_features=16), data=st.data())
def test_truncated_svd_error_is_eckart_young(layer, data):
    if not _moderate(layer):
        return
    w = layer.weight.detach().double()
    rank = data.draw(st.integers(1, min(w.shape)))
    new, _ = compress_layer(layer, SVDConfig(rank=rank))
    if new is None:
        return
    sigma = torch.linalg.svdvals(w)
    optimum = float(sigma[rank:].pow(2).sum().sqrt())
    error = float((dense_weight(new).double() - w).norm())
    assert error <= optimum + 1e-4 * float(sigma[0]) + 1e-30
