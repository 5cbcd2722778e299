"""The energy rule for TT, HT and tensorized Tucker: each bond / node / mode gets the rank its own
unfolding's spectrum asks for, and the truncation error stays within the SVD-based bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modelzip.core.errors import ConfigError
from modelzip.decompose import HTConfig, TTConfig
from modelzip.decompose.configs import TuckerTensorizedConfig
from modelzip.decompose.factorized import weight_tensor
from modelzip.decompose.ht import HTLinear, dimension_tree, tree_nodes
from modelzip.decompose.rank import rank_for_energy, unfolding_ranks
from modelzip.decompose.tt import TTConv2d, TTLinear
from modelzip.decompose.tt_embedding import TTEmbedding
from modelzip.decompose.tucker import TuckerLinear


def _trained_like(out_f: int, in_f: int, seed: int = 0) -> nn.Linear:
    """A linear layer whose weight has a decaying spectrum, as trained layers do."""
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    u, sv, v = torch.linalg.svd(torch.randn(out_f, in_f), full_matrices=False)
    s = torch.exp(-torch.arange(len(sv), dtype=torch.float32) / 6)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(s) @ v)
    return layer


def _error(approx: torch.Tensor, ref: torch.Tensor) -> float:
    return float((approx.detach() - ref.detach()).norm() / ref.detach().norm())


def test_unfolding_ranks_follow_each_unfoldings_spectrum() -> None:
    t = torch.randn(4, 5, 6, dtype=torch.float64)
    got = unfolding_ranks(t, [[0], [0, 1], [2]], 0.9)
    want = [
        rank_for_energy(torch.linalg.svdvals(t.reshape(4, 30)), 0.9),
        rank_for_energy(torch.linalg.svdvals(t.reshape(20, 6)), 0.9),
        rank_for_energy(torch.linalg.svdvals(t.permute(2, 0, 1).reshape(6, 20)), 0.9),
    ]
    assert got == want


@pytest.mark.parametrize("energy", [0.6, 0.9, 0.99])
def test_tt_energy_sizes_each_bond_and_keeps_the_oseledets_bound(energy: float) -> None:
    dense = _trained_like(48, 64)
    tt = TTLinear.from_dense(dense, TTConfig(d=3, energy=energy))
    tensor = weight_tensor(dense.weight.detach().double(), tt.in_modes, tt.out_modes)
    assert list(tt.ranks[1:-1]) == unfolding_ranks(tensor, [[0], [0, 1]], energy)
    assert _error(tt.weight(), dense.weight) <= math.sqrt(2 * (1 - energy)) + 1e-6


@pytest.mark.parametrize("energy", [0.6, 0.9, 0.99])
def test_ht_energy_sizes_each_node_and_keeps_the_hsvd_bound(energy: float) -> None:
    dense = _trained_like(48, 64)
    ht = HTLinear.from_dense(dense, HTConfig(d=4, energy=energy))
    nodes = tree_nodes(dimension_tree(4, "balanced"))
    assert len(ht.ranks) == len(nodes)
    # Hierarchical SVD: ‖W − Ŵ‖² ≤ Σ over non-root nodes of the energy each truncation drops.
    bound = math.sqrt((len(nodes) - 1) * (1 - energy))
    assert _error(ht.weight(), dense.weight) <= bound + 1e-6


def test_energy_one_keeps_every_format_exact() -> None:
    dense = _trained_like(20, 24)
    for layer in (
        TTLinear.from_dense(dense, TTConfig(d=2, energy=1.0)),
        HTLinear.from_dense(dense, HTConfig(d=3, energy=1.0)),
        TuckerLinear.from_dense(dense, TuckerTensorizedConfig(d=2, energy=1.0)),
    ):
        assert _error(layer.weight(), dense.weight) < 1e-5


def test_lower_energy_gives_smaller_ranks_for_conv_embedding_and_tucker() -> None:
    torch.manual_seed(0)
    conv, emb, lin = nn.Conv2d(16, 16, 3), nn.Embedding(100, 16), _trained_like(48, 64)
    for build in (
        lambda e: TTConv2d.from_dense(conv, TTConfig(d=2, energy=e)).ranks,
        lambda e: TTEmbedding.from_dense(emb, TTConfig(d=2, energy=e)).ranks,
        lambda e: TuckerLinear.from_dense(lin, TuckerTensorizedConfig(d=2, energy=e)).ranks,
    ):
        low, high = build(0.5), build(0.99)
        assert all(a <= b for a, b in zip(low, high, strict=True)) and low != high


def test_energy_is_validated_and_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"energy=1.5 is out of range; allowed \(0, 1\]"):
        TTConfig(energy=1.5)
    with pytest.raises(ConfigError, match="at most one"):
        HTConfig(energy=0.9, rank=4)
