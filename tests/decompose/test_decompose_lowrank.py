"""Low-rank matrix decompositions: exactness at full rank, Eckart–Young, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.core.errors import ConfigError, ModelError
from modelzip.decompose import (
    ChannelLowRankConv2d,
    LowRankLinear,
    SpatialLowRankConv2d,
    SVDConfig,
)
from modelzip.decompose.rank import rank_for_energy, rank_for_fraction


def _roundtrip(layer):
    rebuilt = type(layer).from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    return rebuilt


@pytest.mark.parametrize("explicit_s", [False, True])
def test_linear_full_rank_is_exact(explicit_s):
    torch.manual_seed(0)
    dense = nn.Linear(20, 30)
    layer = LowRankLinear.from_dense(dense, rank=20, singular_values=explicit_s)
    x = torch.randn(7, 20)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.to_dense()(x), layer(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_roundtrip(layer)(x), layer(x))


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_truncated_svd_error_is_eckart_young_optimum(rank):
    torch.manual_seed(1)
    dense = nn.Linear(16, 24)
    layer = LowRankLinear.from_dense(dense, rank=rank, singular_values=True)
    s = torch.linalg.svdvals(dense.weight.detach().double())
    optimum = s[rank:].pow(2).sum().sqrt()
    error = (layer.to_dense().weight.double() - dense.weight.double()).norm()
    torch.testing.assert_close(error, optimum, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("explicit_s", [False, True])
def test_linear_factors_are_layers_under_the_names_files_had(explicit_s):
    torch.manual_seed(0)
    layer = LowRankLinear.from_dense(nn.Linear(12, 9), rank=4, singular_values=explicit_s)
    assert type(layer.first) is nn.Linear and type(layer.second) is nn.Linear
    assert layer.compressible_parts == ("first", "second")
    # The state dict (and so the saved file) keeps the names from before the factors were layers.
    state = layer.state_dict()
    want = ["factor_in", "singular_values", "factor_out", "bias"]
    assert list(state) == [k for k in want if explicit_s or k != "singular_values"]
    assert torch.equal(state["factor_in"], layer.first.weight)
    assert torch.equal(state["bias"], layer.second.bias)
    # Inside a container too (the recurrent layers hold LowRankLinears in ModuleLists).
    box = nn.ModuleList([nn.Linear(2, 2), layer])
    assert "1.factor_out" in box.state_dict() and "1.second.weight" not in box.state_dict()
    fresh = nn.ModuleList([nn.Linear(2, 2), type(layer).from_spec(layer.spec())])
    fresh.load_state_dict(box.state_dict())
    x = torch.randn(3, 12)
    torch.testing.assert_close(fresh[1](x), layer(x), rtol=0, atol=0)
    # The new parameter names load as well.
    named = {n: p.detach() for n, p in layer.named_parameters()}
    fresh[1].load_state_dict(named)
    torch.testing.assert_close(fresh[1](x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize(("fold", "extra"), [(True, 0), (False, 1)])
def test_linear_param_count_formula(fold, extra):
    m, n, r = 30, 20, 5
    layer = LowRankLinear.from_dense(nn.Linear(n, m), SVDConfig(rank=r, fold_singular_values=fold))
    assert layer.param_count() == r * (m + n + extra) + m


def test_conv_channel_and_spatial_full_rank_exact():
    torch.manual_seed(2)
    dense = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 11, 11)
    channel = ChannelLowRankConv2d.from_dense(dense, SVDConfig(energy=1.0))
    spatial = SpatialLowRankConv2d.from_dense(dense, SVDConfig(energy=1.0))
    for layer in (channel, spatial):
        torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.to_dense()(x), layer(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_roundtrip(layer)(x), layer(x))
    assert channel.rank == 8 and spatial.rank == min(6 * 3, 3 * 8)


def test_conv_param_counts_and_workloads():
    dense = nn.Conv2d(16, 32, (3, 5), padding=(1, 2))
    x = torch.randn(1, 16, 10, 10)
    channel = ChannelLowRankConv2d.from_dense(dense, rank=4)
    assert channel.param_count() == 4 * (16 * 15 + 32) + 32
    spatial = SpatialLowRankConv2d.from_dense(dense, rank=4)
    assert spatial.param_count() == 4 * (16 * 3 + 32 * 5) + 32
    macs = sum(w.macs for w in spatial.workloads("s", (x,), spatial(x)))
    assert macs == 100 * 4 * (16 * 3 + 32 * 5)


def test_spatial_truncation_is_optimal_for_its_matrix():
    torch.manual_seed(3)
    dense = nn.Conv2d(4, 5, 3)
    layer = SpatialLowRankConv2d.from_dense(dense, rank=2)
    M = dense.weight.detach().double().permute(1, 2, 3, 0).reshape(12, 15)
    s = torch.linalg.svdvals(M)
    err = (layer.to_dense().weight.double() - dense.weight.double()).norm()
    torch.testing.assert_close(err, s[2:].pow(2).sum().sqrt(), rtol=1e-4, atol=1e-6)


def test_rank_rules():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert rank_for_energy(s, 1.0) == 3
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 0.65) == 2
    assert rank_for_fraction(100, 100, 0.5) == 25
    layer = LowRankLinear.from_dense(nn.Linear(100, 100), SVDConfig(rank_fraction=0.5))
    assert layer.param_count() - 100 <= 0.5 * 100 * 100


def test_invalid_ranks_give_clear_errors():
    with pytest.raises(ConfigError, match=r"rank=0 is out of range; allowed \[1, inf\)"):
        SVDConfig(rank=0)
    with pytest.raises(ConfigError, match="at most one"):
        SVDConfig(rank=3, energy=0.9)
    with pytest.raises(ConfigError, match="energy"):
        SVDConfig(energy=1.5)
    with pytest.raises(ModelError, match=r"rank 21 is out of range; allowed \[1, 20\]"):
        LowRankLinear.from_dense(nn.Linear(20, 30), SVDConfig(rank=21))
