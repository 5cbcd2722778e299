"""Pruning grains reach their exact target and keep their structure; schedules and thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.errors import ConfigError
from modelzip.models import create
from modelzip.prune import (
    BlockPruneConfig,
    MagnitudePruneConfig,
    NMPruneConfig,
    ThresholdPruneConfig,
    VectorPruneConfig,
)
from modelzip.prune.grains import (
    block_density,
    block_mask,
    kernel_mask,
    nm_mask,
    reorder_for_blocks,
    vector_mask,
)
from modelzip.prune.magnitude import magnitude_mask
from modelzip.prune.schedule import AGPCallback, GlobalPruneConfig, agp_sparsity, masked_layers


@pytest.fixture
def weight() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(16, 8, 3, 3)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_element_rows_columns_blocks_kernels_hit_exact_sparsity(weight, sparsity):
    n = weight.numel()
    assert int((~magnitude_mask(weight, sparsity)).sum()) == round(sparsity * n)
    rows = vector_mask(weight, sparsity, "row").reshape(16, -1)
    assert int((~rows.all(1)).sum()) == round(sparsity * 16)
    assert bool((rows.all(1) | ~rows.any(1)).all())  # whole rows
    cols = vector_mask(weight, sparsity, "column").reshape(16, -1)
    assert int((~cols.all(0)).sum()) == round(sparsity * 72)
    assert bool((cols.all(0) | ~cols.any(0)).all())
    blocks = block_mask(weight, sparsity, (4, 8)).reshape(4, 4, 9, 8).permute(0, 2, 1, 3)
    per_block = blocks.reshape(4, 9, -1)
    assert bool((per_block.all(-1) | ~per_block.any(-1)).all())  # blocks are whole
    assert int((~per_block.all(-1)).sum()) == round(sparsity * 36)
    kernels = kernel_mask(weight, sparsity).reshape(16, 8, 9)
    assert bool((kernels.all(-1) | ~kernels.any(-1)).all())
    assert int((~kernels.all(-1)).sum()) == round(sparsity * 128)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 3), (0, 2)])
def test_nm_holds_in_every_group(weight, n, m):
    mask = nm_mask(weight.reshape(16, -1)[:, :72], n, m)
    groups = mask.reshape(16, -1, m)
    assert bool((groups.sum(-1) == n).all())
    # The kept ones are the largest of their group.
    w = weight.reshape(16, -1)[:, :72].abs().reshape(16, -1, m)
    if 0 < n < m:
        assert bool(
            (w[groups].min() >= 0)
            and (w.masked_fill(~groups, -1).amax(-1) >= w.masked_fill(groups, -1).amax(-1)).all()
        )


def test_invalid_targets_fail_clearly(weight):
    with pytest.raises(ConfigError, match=r"sparsity=1\.0.*\[0, 1\)"):
        BlockPruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match=r"VectorPruneConfig\.sparsity"):
        VectorPruneConfig(sparsity=1.5)
    with pytest.raises(ConfigError, match=r"n=5.*m=4"):
        NMPruneConfig(n=5, m=4)
    with pytest.raises(ConfigError, match="block"):
        BlockPruneConfig(block=(0, 4))
    with pytest.raises(ValueError, match="do not divide the 16x72"):
        block_mask(weight, 0.5, (5, 4))
    with pytest.raises(ValueError, match="do not divide the row length 72"):
        nm_mask(weight, 2, 5)
    with pytest.raises(ValueError, match=r"sparsity=1"):
        vector_mask(weight, 1.0, "row")


def test_methods_skip_layers_whose_shape_the_grain_does_not_fit():
    model = create("lenet5").eval()
    x = torch.rand(2, 1, 28, 28)
    _, report = modelzip.compress(model, NMPruneConfig(n=2, m=4), sample=x, measure=False)
    skipped = {s.name: s.reason for s in report.skipped}
    assert "conv1" in skipped and "row length 25" in skipped["conv1"]  # 1x5x5 filters
    assert {c.name for c in report.layers} == {"conv2", "fc1", "fc2"}
    small, _ = modelzip.compress(
        model, BlockPruneConfig(grain="kernel", sparsity=0.5), sample=x, measure=False, deploy=False
    )
    conv2 = small.conv2.mask.reshape(50, 20, 25)
    assert bool((conv2.all(-1) | ~conv2.any(-1)).all())


def test_reordering_gathers_a_scattered_block_matrix_into_dense_blocks():
    rng = np.random.default_rng(0)
    dense = np.kron(np.eye(6, dtype=bool), np.ones((4, 4), dtype=bool))
    dense |= np.kron(rng.random((6, 6)) < 0.2, np.ones((4, 4), dtype=bool))
    rows, cols = rng.permutation(24), rng.permutation(24)
    scattered = dense[rows][:, cols]
    assert block_density(scattered, (4, 4)) < 0.5
    r, c = reorder_for_blocks(scattered)
    assert block_density(scattered[r][:, c], (4, 4)) == 1.0
    assert sorted(r) == list(range(24)) and sorted(c) == list(range(24))


def test_threshold_prune_uses_quality_times_std():
    torch.manual_seed(0)
    layer = nn.Linear(50, 40)
    nn.init.normal_(layer.weight)
    model = nn.Sequential(layer)
    small, _ = modelzip.compress(model, ThresholdPruneConfig(quality=1.0), measure=False)
    w = layer.weight.detach()
    assert torch.equal(small[0].mask, w.abs() > w.std())
    assert small[0].sparsity() == pytest.approx(0.683, abs=0.04)  # erf(1/√2) of a Gaussian


def test_global_prune_hits_total_sparsity_with_uneven_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10))
    with torch.no_grad():
        model[2].weight.mul_(10)  # large weights: the global threshold spares this layer
    small, report = modelzip.compress(model, GlobalPruneConfig(sparsity=0.6), measure=False)
    layers = masked_layers(small)
    pruned = sum(int((~m.mask).sum()) for m in layers.values())
    assert pruned == round(0.6 * (30 * 40 + 40 * 10))
    assert layers["0"].sparsity() > 0.7 > layers["2"].sparsity()
    assert len(report.layers) == 2


def test_masks_persist_through_training_and_agp_reaches_final(digits):
    from modelzip.train import TrainConfig, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model, _ = modelzip.compress(model, MagnitudePruneConfig(sparsity=0.5), measure=False)
    before = {n: m.mask.clone() for n, m in masked_layers(model).items()}
    agp = AGPCallback(0.8, begin_step=2, end_step=20, frequency=3)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, val_size=0, weight_decay=1e-3)
    train(model, digits, config, progress=False, callbacks=[agp])
    for name, layer in masked_layers(model).items():
        assert not bool((layer.mask & ~before[name]).any())  # pruned weights stay pruned
        assert layer.sparsity() == pytest.approx(0.8, abs=1e-3)
        assert bool((layer.masked_weight()[~layer.mask] == 0).all())
    sparsities = [s for _, s in agp.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.8)


def test_agp_cubic_schedule():
    assert agp_sparsity(0, 0.9, 10, 110) == 0.0
    assert agp_sparsity(10, 0.9, 10, 110) == 0.0
    assert agp_sparsity(60, 0.9, 10, 110) == pytest.approx(0.9 * (1 - 0.5**3))
    assert agp_sparsity(500, 0.9, 10, 110) == 0.9
