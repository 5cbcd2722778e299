"""TT and HT layers cut into two GEMMs: same outputs, the cut's rank and MACs as stated."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import modelzip
from modelzip.decompose.configs import HTConfig, TTConfig, TuckerTensorizedConfig
from modelzip.decompose.ht import HTLinear
from modelzip.decompose.tt import TTLinear
from modelzip.decompose.tucker import TuckerLinear as TuckerTensorizedLinear
from modelzip.kernels import materialize
from modelzip.kernels.split_linear import SplitLinear, plan_cut


def _layer(cls: type, config: object, n: int = 301, m: int = 250) -> nn.Module:
    torch.manual_seed(0)
    return cls.from_dense(nn.Linear(n, m), config).eval()


CASES = [
    (TTLinear, TTConfig(rank=5, d=3)),
    (TTLinear, TTConfig(rank=3, d=4)),
    (HTLinear, HTConfig(rank=4, d=4)),
    (HTLinear, HTConfig(rank=3, d=5, tree="tt")),
]


@pytest.mark.parametrize(("cls", "config"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_split_equals_the_factorized_layer(cls: type, config: object) -> None:
    layer = _layer(cls, config)
    split = SplitLinear.from_factorized(layer)
    for rows in (1, 7, 70):  # odd sizes; 70 rows cross a chunk boundary below
        x = torch.randn(rows, 301)
        with torch.no_grad():
            torch.testing.assert_close(split(x), layer(x), rtol=1e-4, atol=1e-4)
    import modelzip.kernels.split_linear as sl

    old, sl.CHUNK_FLOATS = sl.CHUNK_FLOATS, 1  # one row per chunk
    try:
        with torch.no_grad():
            torch.testing.assert_close(split(x), layer(x), rtol=1e-4, atol=1e-4)
    finally:
        sl.CHUNK_FLOATS = old
    torch.testing.assert_close(split.to_dense().weight, layer.to_dense().weight, rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    # With gradients on (no out= buffers) it still computes the same and back-propagates.
    x = torch.randn(5, 301, requires_grad=True)
    split(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_tt_cut_is_the_rank_between_halves() -> None:
    config = TTConfig(ranks=(2, 6, 3), in_modes=(4, 5, 4, 4), out_modes=(4, 4, 4, 4))
    layer = _layer(TTLinear, config, 320, 256)
    cut = plan_cut(layer)
    assert cut is not None and cut.bond_size == layer.ranks[cut.h]
    n, m = layer.in_modes, layer.out_modes
    n_l, n_r = math.prod(n[: cut.h]), math.prod(n[cut.h :])
    m_l, m_r = math.prod(m[: cut.h]), math.prod(m[cut.h :])
    b = cut.bond_size
    assert cut.macs_per_row == n_l * n_r * b * m_r + m_l * n_l * b * m_r
    others = [
        math.prod(n) * layer.ranks[h] * math.prod(m[h:])
        + math.prod(m[:h]) * math.prod(n[:h]) * layer.ranks[h] * math.prod(m[h:])
        for h in range(1, layer.d)
    ]
    assert cut.macs_per_row == min(others)
    assert SplitLinear.from_factorized(layer).macs_per_row() == cut.macs_per_row


def test_ht_balanced_cut_crosses_one_rank() -> None:
    layer = _layer(HTLinear, HTConfig(rank=4, d=4), 256, 256)
    cut = plan_cut(layer)
    assert cut is not None and cut.h == 2 and cut.bond_size == 4  # the root's children's rank


def test_tucker_cuts_through_one_factor_rank_and_no_bigger_form() -> None:
    layer = _layer(TuckerTensorizedLinear, TuckerTensorizedConfig(rank=3, d=3), 64, 64)
    cut = plan_cut(layer)  # the core goes to one side; the cut crosses one factor's rank
    assert cut is not None and cut.bond_size == 3
    x = torch.randn(9, 64)
    with torch.no_grad():
        torch.testing.assert_close(SplitLinear.from_factorized(layer)(x), layer(x), rtol=1e-4,
                                   atol=1e-4)  # fmt: skip
    full = _layer(TTLinear, TTConfig(rank=64, d=2, in_modes=(8, 8), out_modes=(8, 8)), 64, 64)
    assert plan_cut(full) is None  # rank 64 across the cut stores more than 64 × 64
    with pytest.raises(ValueError, match="no cut smaller"):
        SplitLinear.from_factorized(full)


def test_materialize_offers_the_split_and_it_saves(tmp_path: object) -> None:
    from modelzip.models import create

    torch.manual_seed(0)
    model = create("lenet300").eval()
    model.fc1 = TTLinear.from_dense(model.fc1, TTConfig(rank=4, d=4))
    x = torch.randn(32, 1, 28, 28)
    new, report = materialize(model, x, reps=1, choose="compressed")
    rows = {r.name: r for r in report.layers}
    assert isinstance(new.fc1, SplitLinear) and rows["fc1"].kernel == "two-GEMM cut"
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-4, atol=1e-4)
    path = modelzip.save(new, tmp_path / "split.mzip")  # type: ignore[operator]
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(x), model(x), rtol=1e-4, atol=1e-4)
