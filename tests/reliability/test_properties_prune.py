"""Properties of every pruner: exact sparsity at its grain and the structure it promises.

Each method of the ``prune`` family must appear in :data:`PROPERTIES`;
:func:`test_every_pruner_has_a_property` fails, naming it, when a new one does not.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from weight_strategies import PROFILE, compress_layer, dense_weight, methods_of, sample_for, weights

import modelzip
from modelzip.prune.channels import ChannelPruneConfig
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.prune.methods import (
    BlockPruneConfig,
    NMPruneConfig,
    ThresholdPruneConfig,
    VectorPruneConfig,
)
from modelzip.prune.rnn import HiddenPruneConfig
from modelzip.prune.schedule import GlobalPruneConfig
from modelzip.prune.sparse_exec import SparseExecConfig

PROPERTIES = {
    "magnitude_prune": "test_magnitude_exact_sparsity_keeps_largest",
    "global_prune": "test_global_exact_sparsity_one_threshold",
    "nm_prune": "test_nm_every_group",
    "block_prune": "test_block_whole_blocks",
    "vector_prune": "test_vector_whole_rows_or_columns",
    "threshold_prune": "test_threshold_is_han_rule",
    "sparse_exec": "test_sparse_exec_computes_the_same",
    "channel_prune": "test_channel_prune_keeps_whole_channels",
    "hidden_prune": "test_hidden_prune_keeps_whole_units",
    "head_prune": "test_head_prune_removes_whole_heads_as_masking_them_does",
    "ffn_prune": "test_ffn_prune_removes_whole_neurons_as_masking_them_does",
}

SPARSITY = st.floats(0.0, 0.95)


def test_every_pruner_has_a_property():
    missing = [m for m in methods_of("prune") if m not in PROPERTIES]
    assert not missing, f"pruners without a property test in {__file__}: {missing}"


@st.composite
def _linear(draw: st.DrawFn, rows_multiple: int = 1, cols_multiple: int = 1) -> nn.Linear:
    rows = rows_multiple * draw(st.integers(1, 6))
    cols = cols_multiple * draw(st.integers(1, 6))
    layer = nn.Linear(cols, rows)
    with torch.no_grad():
        layer.weight.copy_(draw(weights((rows, cols))))
    return layer.eval()


@PROFILE
@given(layer=_linear(), sparsity=SPARSITY)
def test_magnitude_exact_sparsity_keeps_largest(layer, sparsity):
    new, _ = compress_layer(layer, MagnitudePruneConfig(sparsity=sparsity))
    mask, w = new.mask, layer.weight.detach()
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if mask.any() and (~mask).any():
        assert w[mask].abs().min() >= w[~mask].abs().max()


@PROFILE
@given(first=_linear(), second=_linear(), sparsity=SPARSITY)
def test_global_exact_sparsity_one_threshold(first, second, sparsity):
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(first.out_features, 3))
    model[2] = second if second.in_features == first.out_features else model[2]
    x = sample_for(first)
    small, _ = modelzip.compress(
        model, GlobalPruneConfig(sparsity=sparsity), sample=x, deploy=False
    )
    masks = [small[i].mask.reshape(-1) for i in (0, 2)]
    values = torch.cat([model[i].weight.detach().reshape(-1) for i in (0, 2)]).abs()
    mask = torch.cat(masks)
    assert int((~mask).sum()) == round(sparsity * mask.numel())
    if mask.any() and (~mask).any():
        assert values[mask].min() >= values[~mask].max()


@PROFILE
@given(data=st.data(), m=st.integers(1, 8))
def test_nm_every_group(data, m):
    n = data.draw(st.integers(0, m))
    layer = data.draw(_linear(cols_multiple=m))
    new, _ = compress_layer(layer, NMPruneConfig(n=n, m=m))
    if n == m:
        assert new is None or bool(new.mask.all())
        return
    groups = new.mask.reshape(layer.out_features, -1, m)
    assert (groups.sum(-1) == n).all()  # exactly n kept in every group of m
    w = layer.weight.detach().abs().reshape(layer.out_features, -1, m)
    kept = torch.where(groups, w, torch.inf).amin(-1)
    dropped = torch.where(~groups, w, -torch.inf).amax(-1)
    assert (kept >= dropped).all()


@PROFILE
@given(data=st.data(), br=st.integers(1, 3), bc=st.integers(1, 3), sparsity=SPARSITY)
def test_block_whole_blocks(data, br, bc, sparsity):
    layer = data.draw(_linear(rows_multiple=br, cols_multiple=bc))
    new, _ = compress_layer(layer, BlockPruneConfig(sparsity=sparsity, block=(br, bc)))
    rows, cols = layer.out_features // br, layer.in_features // bc
    tiles = new.mask.reshape(rows, br, cols, bc).permute(0, 2, 1, 3).reshape(rows, cols, -1)
    assert (tiles.all(-1) | ~tiles.any(-1)).all()  # every block entirely kept or removed
    assert int((~tiles.all(-1)).sum()) == round(sparsity * rows * cols)


@PROFILE
@given(layer=_linear(), sparsity=SPARSITY, axis=st.sampled_from(["row", "column"]))
def test_vector_whole_rows_or_columns(layer, sparsity, axis):
    new, _ = compress_layer(layer, VectorPruneConfig(sparsity=sparsity, axis=axis))
    mask = new.mask if axis == "row" else new.mask.t()
    assert (mask.all(1) | ~mask.any(1)).all()
    assert int((~mask.all(1)).sum()) == round(sparsity * mask.shape[0])


@PROFILE
@given(layer=_linear(), quality=st.floats(0.0, 3.0))
def test_threshold_is_han_rule(layer, quality):
    new, _ = compress_layer(layer, ThresholdPruneConfig(quality=quality))
    w = layer.weight.detach()
    std = w.std() if w.numel() > 1 else torch.tensor(0.0)
    assert torch.equal(new.mask, w.abs() > quality * std)


@PROFILE
@given(layer=_linear(), sparsity=st.floats(0.0, 0.99), mode=st.sampled_from(["auto", "csr"]))
def test_sparse_exec_computes_the_same(layer, sparsity, mode):
    if layer.weight.abs().max() > 1e15:
        return  # products of huge weights overflow in either order of summation
    pruned, _ = compress_layer(layer, MagnitudePruneConfig(sparsity=sparsity))
    new, _ = compress_layer(pruned, SparseExecConfig(mode=mode, min_sparsity=0.0))
    x = sample_for(layer)
    with torch.inference_mode():
        want, got = pruned(x), new(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()) + 1e-6)
    assert torch.equal(dense_weight(new), dense_weight(pruned))


@PROFILE
@given(hidden=st.integers(1, 12), sparsity=SPARSITY, seed=st.integers(0, 1000))
def test_channel_prune_keeps_whole_channels(hidden, sparsity, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, 3)).eval()
    x = torch.randn(4, 5)
    small, _ = modelzip.compress(model, ChannelPruneConfig(sparsity=sparsity, round_to=1), sample=x)
    keep = max(1, hidden - round(sparsity * hidden))
    assert small[0].out_features == small[2].in_features == keep
    # Every kept unit is one of the original units, whole (its row and its column).
    old = torch.cat([model[0].weight, model[0].bias[:, None], model[2].weight.t()], 1)
    new = torch.cat([small[0].weight, small[0].bias[:, None], small[2].weight.t()], 1)
    for row in new:
        assert any(torch.equal(row, r) for r in old)
    assert small(x).shape == model(x).shape


class _Lm(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


@PROFILE
@given(hidden=st.integers(1, 10), sparsity=SPARSITY, seed=st.integers(0, 1000))
def test_hidden_prune_keeps_whole_units(hidden, sparsity, seed):
    torch.manual_seed(seed)
    model = _Lm(hidden).eval()
    x = torch.randn(2, 5, 4)
    small, _ = modelzip.compress(model, HiddenPruneConfig(sparsity=sparsity), sample=x)
    keep = max(1, hidden - round(sparsity * hidden))  # at least one unit stays
    rnn = small.rnn.rnn if keep < hidden else small.rnn  # a pruned LSTM is a PrunedRNN
    assert rnn.hidden_size == small.head.in_features == keep
    with torch.inference_mode():
        assert small(x).shape == model(x).shape and torch.isfinite(small(x)).all()


class _Block(nn.Module):
    """Attention (nn.MultiheadAttention, as a ViT calls it) and a two-layer MLP."""

    def __init__(self, heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        width = heads * head_dim
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


def _block(heads: int, head_dim: int, hidden: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = _Block(heads, head_dim, hidden).eval()
    return model, torch.randn(2, 5, heads * head_dim)


@PROFILE
@given(heads=st.integers(1, 6), head_dim=st.integers(1, 4), sparsity=SPARSITY,
       seed=st.integers(0, 1000))  # fmt: skip
def test_head_prune_removes_whole_heads_as_masking_them_does(heads, head_dim, sparsity, seed):
    from modelzip.core.attention import PackedAttention
    from modelzip.prune.heads import HeadPruneConfig

    model, x = _block(heads, head_dim, 4, seed)
    small, _ = modelzip.compress(
        model, HeadPruneConfig(sparsity=sparsity), sample=x, measure=False, deploy=False
    )
    kept = max(1, heads - round(sparsity * heads))
    attn = small.attn
    assert attn.num_heads == kept
    assert attn.in_proj.weight.shape == (3 * kept * head_dim, heads * head_dim)
    # The same as zeroing the dropped heads' columns of the output projection.
    masked = PackedAttention.from_mha(model.attn)
    cols = [
        int(torch.nonzero((c == masked.out_proj.weight.T).all(dim=1))[0])
        for c in attn.out_proj.weight.T
    ]
    assert len(set(c // head_dim for c in cols)) == kept  # whole heads
    drop = torch.ones(heads * head_dim, dtype=torch.bool)
    drop[cols] = False
    with torch.no_grad():
        masked.out_proj.weight[:, drop] = 0
    model.attn = masked.eval()
    with torch.inference_mode():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


@PROFILE
@given(hidden=st.integers(1, 12), sparsity=SPARSITY, seed=st.integers(0, 1000))
def test_ffn_prune_removes_whole_neurons_as_masking_them_does(hidden, sparsity, seed):
    from modelzip.prune.heads import FFNPruneConfig

    model, x = _block(2, 2, hidden, seed)
    small, _ = modelzip.compress(
        model, FFNPruneConfig(sparsity=sparsity), sample=x, measure=False, deploy=False
    )
    kept = max(1, hidden - round(sparsity * hidden))
    up, down = small.mlp[0], small.mlp[2]
    assert up.out_features == down.in_features == kept
    rows = [int(torch.nonzero((model.mlp[0].weight == r).all(dim=1))[0]) for r in up.weight]
    drop = torch.ones(hidden, dtype=torch.bool)
    drop[rows] = False
    with torch.no_grad():
        model.mlp[0].weight[drop] = 0
        model.mlp[0].bias[drop] = 0
    with torch.inference_mode():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range_is_refused_naming_the_field(sparsity):
    from modelzip.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sparsity=.* out of range; allowed \[0, 1\)"):
        MagnitudePruneConfig(sparsity=sparsity)
