"""Decomposed LSTM / GRU / RNN: same inputs, hidden states and outputs as the torch modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.decompose import (
    DecomposedRNN,
    HTLinear,
    LowRankLinear,
    RNNHTConfig,
    RNNLowRankConfig,
    RNNTTConfig,
    TTLinear,
)

FULL = RNNLowRankConfig(energy=1.0)


def _states(rnn: nn.RNNBase, batch: int | None):
    n = rnn.num_layers * (2 if rnn.bidirectional else 1)
    shape = (n, rnn.hidden_size) if batch is None else (n, batch, rnn.hidden_size)
    h = torch.randn(shape)
    return (h, torch.randn(shape)) if isinstance(rnn, nn.LSTM) else h


def _assert_same(a, b):
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=False):
            _assert_same(x, y)
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


RNNS = [
    lambda: nn.LSTM(10, 12, num_layers=2, batch_first=True),
    lambda: nn.LSTM(10, 12, bidirectional=True),
    lambda: nn.GRU(10, 12, num_layers=2, bidirectional=True, batch_first=True),
    lambda: nn.RNN(10, 12, nonlinearity="relu", bias=False),
    lambda: nn.RNN(10, 12, num_layers=2),
]


@pytest.mark.parametrize("make", RNNS)
def test_full_rank_matches_torch_with_and_without_hidden_states(make):
    torch.manual_seed(0)
    rnn = make().eval()
    layer = DecomposedRNN.from_dense(rnn, FULL, linear_cls=LowRankLinear).eval()
    x = torch.randn(3, 5, 10)
    _assert_same(layer(x), rnn(x))
    hx = _states(rnn, 5 if not rnn.batch_first else 3)
    _assert_same(layer(x, hx), rnn(x, hx))
    unbatched = torch.randn(4, 10)
    hx = _states(rnn, None)
    _assert_same(layer(unbatched, hx), rnn(unbatched, hx))
    _assert_same(layer.to_dense()(x), layer(x))
    rebuilt = DecomposedRNN.from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    _assert_same(rebuilt(x), layer(x))


def test_lowrank_param_count_formula():
    rnn = nn.LSTM(32, 16)
    layer = DecomposedRNN.from_dense(rnn, RNNLowRankConfig(rank=4))
    gates_h = 4 * 16
    assert layer.param_count() == 4 * (gates_h + 32) + 4 * (gates_h + 16) + 2 * gates_h


@pytest.mark.parametrize(
    ("config", "cls"),
    [(RNNTTConfig(rank=10**6, d=2), TTLinear), (RNNHTConfig(rank=10**6, d=2), HTLinear)],
)
def test_tt_and_ht_recurrent_full_rank_exact(config, cls):
    torch.manual_seed(0)
    rnn = nn.GRU(16, 8, batch_first=True)
    layer = DecomposedRNN.from_dense(rnn, config, linear_cls=cls)
    assert all(isinstance(m, cls) for m in layer.ih)
    x = torch.randn(2, 6, 16)
    _assert_same(layer(x), rnn(x))
    small = DecomposedRNN.from_dense(rnn, config.replace(rank=2), linear_cls=cls)
    assert small.param_count() < sum(p.numel() for p in rnn.parameters())
    works = small.workloads("gru", (x,), None)
    assert {w.time_steps for w in works} == {1, 6}
