"""Hierarchical Tucker: exactness for known hierarchical ranks, TT as the degenerate tree."""

from __future__ import annotations

import pytest
import tensorly as tl
import torch
from torch import nn

from modelzip.core.errors import ConfigError, ModelError
from modelzip.decompose import HTConfig, HTLinear, HTTensor, dimension_tree, ht_svd, tt_to_ht
from modelzip.decompose.factorized import tensorly_torch
from modelzip.decompose.ht import ht_params, ht_ranks, tree_nodes


def _random_ht(shape, tree, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    nodes = tree_nodes(tree)
    r = dict(zip(nodes, ht_ranks(shape, tree, rank), strict=False))
    factors = [
        torch.randn(shape[n.modes[0]], r[n], generator=g, dtype=torch.double)
        if n.is_leaf
        else torch.randn(r[n.left], r[n.right], r[n], generator=g, dtype=torch.double)
        for n in nodes
    ]
    return HTTensor(tuple(shape), tree, factors)


def test_dimension_trees():
    tree = dimension_tree(4)
    assert tree.left.modes == (0, 1) and tree.right.modes == (2, 3)
    tt = dimension_tree(4, "tt")
    assert tt.left.modes == (0,) and tt.right.modes == (1, 2, 3) and tt.right.right.modes == (2, 3)
    assert len(tree_nodes(tree)) == len(tree_nodes(tt)) == 7


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 4, 5, 6, 3)])
@pytest.mark.parametrize("kind", ["balanced", "tt"])
def test_ht_of_tensor_with_known_hierarchical_ranks_is_exact(shape, kind):
    tree = dimension_tree(len(shape), kind)
    known = _random_ht(shape, tree, 2)
    X = known.to_tensor()
    approx = ht_svd(X, 2, tree)
    assert approx.ranks == known.ranks
    assert (approx.to_tensor() - X).norm() <= 1e-10 * X.norm()
    assert approx.param_count() == ht_params(shape, tree, approx.ranks)
    # One rank less at every node cannot be exact.
    assert (ht_svd(X, 1, tree).to_tensor() - X).norm() > 1e-3 * X.norm()


def test_tt_is_the_degenerate_tree_ht():
    g = torch.Generator().manual_seed(0)
    ranks = [1, 2, 3, 2, 1]
    shape = (3, 4, 5, 6)
    cores = [
        torch.randn(ranks[k], n, ranks[k + 1], generator=g, dtype=torch.double)
        for k, n in enumerate(shape)
    ]
    with tensorly_torch():
        X = tl.tt_to_tensor(cores)
    as_ht = tt_to_ht(cores)
    assert as_ht.tree == dimension_tree(4, "tt")
    torch.testing.assert_close(as_ht.to_tensor(), X)
    # The hierarchical SVD on the TT tree finds the TT ranks at the inner nodes (1..3), (2..3).
    approx = ht_svd(X, [3, 2, 4, 3, 5, 2], "tt")
    torch.testing.assert_close(approx.to_tensor(), X)
    inner = [
        r for n, r in zip(tree_nodes(approx.tree), approx.ranks, strict=False) if not n.is_leaf
    ]
    assert inner == [1, 2, 3]  # root, node (1..3) = TT rank r_1, node (2..3) = r_2


def test_ht_linear_equals_dense_and_counts():
    torch.manual_seed(0)
    dense = nn.Linear(64, 48)
    x = torch.randn(7, 64)
    cfg = HTConfig(in_modes=(4, 4, 4), out_modes=(4, 3, 4), rank=10**6)
    full = HTLinear.from_dense(dense, cfg)
    torch.testing.assert_close(full(x), dense(x), atol=1e-5, rtol=1e-5)
    small = HTLinear.from_dense(dense, cfg.replace(rank=3))
    torch.testing.assert_close(small.to_dense()(x), small(x), atol=1e-5, rtol=1e-5)
    # balanced tree over 3 modes: root(node(0,1), leaf 2); node(0,1)=(leaf0, leaf1)
    assert small.ranks == (1, 3, 3, 3, 3)
    expected = 3 * 3 * 1 + 3 * 3 * 3 + 16 * 3 + 12 * 3 + 16 * 3 + 48
    assert small.param_count() == expected
    rebuilt = HTLinear.from_spec(small.spec())
    rebuilt.load_state_dict(small.state_dict())
    torch.testing.assert_close(rebuilt(x), small(x))


def test_ht_rank_errors():
    with pytest.raises(ConfigError, match="non-root nodes"):
        HTConfig(d=3, ranks=(2, 2))
    with pytest.raises(ModelError, match=r"allowed \[1, 16\]"):
        HTLinear.from_dense(
            nn.Linear(64, 48),
            HTConfig(in_modes=(4, 4, 4), out_modes=(4, 3, 4), ranks=(2, 17, 2, 2)),
        )
