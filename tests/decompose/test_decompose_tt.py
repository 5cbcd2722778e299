"""Tensor-train layers: TT-linear, TT-conv, TT embedding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.core.errors import ConfigError, ModelError
from modelzip.decompose import TTConfig, TTConv2d, TTEmbedding, TTLinear
from modelzip.decompose.factorized import factorize

MNIST_TT = TTConfig(in_modes=(4, 7, 4, 7), out_modes=(5, 5, 5, 5), rank=4)


def test_factorize():
    assert factorize(784, 4) == (4, 4, 7, 7)
    assert factorize(625, 4) == (5, 5, 5, 5)
    assert factorize(4096, 3) == (16, 16, 16)
    padded = factorize(1009, 2)  # a prime: padded to a nearby size that factors well
    assert 1009 <= padded[0] * padded[1] <= 1110 and max(padded) <= 2 * 1009**0.5


def test_novikov_mnist_layer_parameter_count():
    layer = TTLinear.from_dense(nn.Linear(784, 625), MNIST_TT)
    assert layer.ranks == (1, 4, 4, 4, 1)
    cores = 1 * 5 * 4 * 4 + 4 * 5 * 7 * 4 + 4 * 5 * 4 * 4 + 4 * 5 * 7 * 1
    assert layer.param_count() == cores + 625 == 1725
    x = torch.randn(3, 784)
    torch.testing.assert_close(layer.to_dense()(x), layer(x), atol=1e-5, rtol=1e-5)


def test_tt_linear_full_rank_exact_with_padding():
    torch.manual_seed(0)
    dense = nn.Linear(30, 13)  # 13 is prime: the output modes are padded
    layer = TTLinear.from_dense(dense, TTConfig(d=2, rank=10**6))
    x = torch.randn(5, 2, 30)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    rebuilt = TTLinear.from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    torch.testing.assert_close(rebuilt(x), layer(x))


def test_tt_linear_workloads_are_its_contraction_chain():
    layer = TTLinear.from_dense(nn.Linear(784, 625), MNIST_TT)
    x = torch.randn(8, 784)
    works = layer.workloads("fc1", (x,), layer(x))
    assert all(w.op == "matmul" for w in works) and len(works) == 4
    assert sum(w.macs for w in works) == layer.plan(8).macs < 8 * 784 * 625 / 3


def test_tt_conv_full_rank_exact_and_params():
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 8, 3, padding=1, stride=2)
    x = torch.randn(2, 6, 9, 9)
    cfg = TTConfig(in_modes=(2, 3), out_modes=(2, 4), rank=10**6)
    layer = TTConv2d.from_dense(dense, cfg)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    small = TTConv2d.from_dense(dense, cfg.replace(rank=None, ranks=(4, 3)))
    assert small.ranks == (4, 3, 1)
    assert small.param_count() == 4 * 9 + 4 * 2 * 2 * 3 + 3 * 4 * 3 * 1 + 8
    torch.testing.assert_close(small.to_dense()(x), small(x), atol=1e-5, rtol=1e-5)


def test_tt_embedding_exact_and_lookup_shape():
    torch.manual_seed(0)
    dense = nn.Embedding(100, 12, padding_idx=0)
    layer = TTEmbedding.from_dense(dense, TTConfig(d=2, rank=10**6))
    ids = torch.randint(0, 100, (4, 5))
    torch.testing.assert_close(layer(ids), dense(ids), atol=1e-5, rtol=1e-5)
    small = TTEmbedding.from_dense(dense, TTConfig(d=2, rank=3))
    torch.testing.assert_close(small.to_dense()(ids), small(ids), atol=1e-5, rtol=1e-5)
    assert small.param_count() == 1 * 10 * 3 * 3 + 3 * 10 * 4 * 1


def test_tt_rank_errors():
    with pytest.raises(ConfigError, match="rank=0"):
        TTConfig(rank=0)
    with pytest.raises(ConfigError, match="need 3"):
        TTConfig(d=4, ranks=(2, 2))
    with pytest.raises(ConfigError, match="same length"):
        TTConfig(in_modes=(4, 7, 4, 7), out_modes=(25, 25))
    with pytest.raises(ModelError, match=r"TT bond 1: rank 50 is out of range; allowed \[1, 20\]"):
        TTLinear.from_dense(nn.Linear(784, 625), MNIST_TT.replace(rank=None, ranks=(50, 4, 4)))
    with pytest.raises(ModelError, match="cannot hold"):
        TTLinear.from_dense(nn.Linear(1000, 625), MNIST_TT)
