"""Tucker-2 and CP convs, the tensorized Tucker linear layer, and VBMF rank selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.core.errors import ConfigError, ModelError
from modelzip.decompose import (
    CPConfig,
    CPConv2d,
    Tucker2Config,
    Tucker2Conv2d,
    TuckerLinear,
    TuckerTensorizedConfig,
)
from modelzip.decompose.cp import exact_cp, exact_rank
from modelzip.decompose.rank import evbmf_rank, tucker2_vbmf_ranks


def test_tucker2_full_rank_exact_and_params():
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 9, 9)
    layer = Tucker2Conv2d.from_dense(dense, Tucker2Config(ranks=(8, 6)))
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    small = Tucker2Conv2d.from_dense(dense, Tucker2Config(ranks=(3, 2)))
    assert small.param_count() == 6 * 2 + 2 * 3 * 9 + 3 * 8 + 8
    torch.testing.assert_close(small.to_dense()(x), small(x), atol=1e-5, rtol=1e-5)
    macs = sum(w.macs for w in small.workloads("t", (x,), small(x)))
    assert macs == 2 * (81 * 6 * 2 + 25 * (2 * 3 * 9) + 25 * 3 * 8)


def test_tucker2_rank_errors():
    with pytest.raises(ConfigError, match="2 entries"):
        Tucker2Config(ranks=(4, 4, 4))
    with pytest.raises(ConfigError, match=r"ranks\[1\]=0"):
        Tucker2Config(ranks=(4, 0))
    with pytest.raises(ModelError, match=r"input rank: rank 7 is out of range; allowed \[1, 6\]"):
        Tucker2Conv2d.from_dense(nn.Conv2d(6, 8, 3), Tucker2Config(ranks=(4, 7)))


def test_evbmf_finds_the_rank_of_a_noisy_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(60, 5, generator=g) @ torch.randn(5, 80, generator=g)
    noisy = signal + 0.1 * torch.randn(60, 80, generator=g)
    assert evbmf_rank(noisy) == 5
    kernel = torch.einsum(
        "abyx,oa,ib->oiyx",
        torch.randn(4, 3, 3, 3, generator=g),
        torch.randn(32, 4, generator=g),
        torch.randn(24, 3, generator=g),
    )
    kernel = kernel + 0.01 * torch.randn(kernel.shape, generator=g)
    assert tucker2_vbmf_ranks(kernel) == (4, 3)
    layer = Tucker2Conv2d.from_dense(nn.Conv2d(24, 32, 3), Tucker2Config(vbmf=True))
    assert 1 <= layer.ranks[0] <= 32 and 1 <= layer.ranks[1] <= 24


def test_cp_recovers_a_low_rank_kernel_and_counts():
    g = torch.Generator().manual_seed(0)
    dense = nn.Conv2d(8, 12, 3, padding=1)
    with torch.no_grad():
        dense.weight.copy_(
            torch.einsum(
                "or,ir,yr,xr->oiyx",
                *(torch.randn(n, 3, generator=g) for n in (12, 8, 3, 3)),
            )
        )
    layer = CPConv2d.from_dense(dense, CPConfig(rank=3))
    x = torch.randn(2, 8, 6, 6, generator=g)
    ref = dense(x)
    assert (layer(x) - ref).abs().max() <= 1e-3 * ref.abs().max()
    torch.testing.assert_close(layer.to_dense()(x), layer(x), atol=1e-4, rtol=1e-4)
    assert layer.param_count() == 3 * (8 + 3 + 3 + 12) + 12


def test_cp_exact_rank_is_exact():
    t = torch.randn(4, 3, 2, 5, dtype=torch.double)
    factors = exact_cp(t)
    assert factors[0].shape[1] == exact_rank(t.shape) == 24
    torch.testing.assert_close(torch.einsum("ar,br,cr,dr->abcd", *factors), t)
    dense = nn.Conv2d(3, 4, 2)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(CPConv2d.from_dense(dense, CPConfig(rank=10**6))(x), dense(x))


def test_tucker_tensorized_linear_exact_params_and_errors():
    torch.manual_seed(0)
    dense = nn.Linear(20, 30)
    x = torch.randn(4, 20)
    cfg = TuckerTensorizedConfig(in_modes=(4, 5), out_modes=(5, 6), rank=10**6)
    layer = TuckerLinear.from_dense(dense, cfg)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    small = TuckerLinear.from_dense(dense, cfg.replace(rank=None, ranks=(3, 4)))
    assert small.param_count() == 5 * 4 * 3 + 6 * 5 * 4 + 3 * 4 + 30
    torch.testing.assert_close(small.to_dense()(x), small(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="one per mode"):
        TuckerTensorizedConfig(in_modes=(4, 5), out_modes=(5, 6), ranks=(3, 4, 5))
    with pytest.raises(ModelError, match=r"allowed \[1, 30\]"):
        TuckerLinear.from_dense(dense, cfg.replace(rank=None, ranks=(3, 31)))
