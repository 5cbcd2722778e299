"""k-means weight sharing: 2^b centroids, zeros kept, centroid gradients, dense round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.errors import ConfigError
from modelzip.joint.weight_sharing import (
    SharedConv2d,
    SharedLinear,
    WeightSharingConfig,
    kmeans_centroids,
    share_weights,
)
from modelzip.prune import MagnitudePruneConfig


def _pruned_linear(sparsity: float = 0.8, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        w = layer.weight
        w.mul_(w.abs() > w.abs().flatten().kthvalue(int(sparsity * w.numel())).values)
    return layer


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_exactly_two_to_the_b_centroids_all_used(bits, init):
    layer = _pruned_linear()
    gen = torch.Generator().manual_seed(0)
    shared = SharedLinear.from_dense(layer, WeightSharingConfig(bits=bits, init=init), gen)
    assert shared.centroids.numel() == 2**bits
    # 1,310 distinct nonzero weights > 2^b: every centroid is used (empty clusters relocated).
    assert shared.used_centroids() == 2**bits


def test_fewer_distinct_values_than_centroids_are_the_centroids():
    values = torch.tensor([0.5, -1.0, 0.5, 2.0, -1.0])
    table = kmeans_centroids(values, bits=3)
    assert table.numel() == 8
    assert set(table.tolist()) == {-1.0, 0.5, 2.0}
    codes, centroids, mask = share_weights(values.reshape(1, -1), bits=3)
    assert torch.equal(centroids[codes.long()] * mask, values.reshape(1, -1))


def test_linear_init_spans_the_range_and_kmeans_lowers_the_error():
    torch.manual_seed(1)
    values = torch.randn(5000)
    init = kmeans_centroids(values, bits=3, iterations=0)
    torch.testing.assert_close(init[[0, -1]], torch.stack([values.min(), values.max()]))

    def error(table: torch.Tensor) -> float:
        return float(((values[:, None] - table[None]) ** 2).min(dim=1).values.sum())

    assert error(kmeans_centroids(values, bits=3, iterations=50)) < 0.7 * error(init)


def test_pruned_zeros_stay_zero_and_dense_form_equals_shared_weights():
    layer = _pruned_linear(0.9)
    zeros = layer.weight == 0
    shared = SharedLinear.from_dense(layer, WeightSharingConfig(bits=3))
    w = shared.shared_weight()
    assert torch.equal(w == 0, zeros)
    assert torch.equal(shared.mask, ~zeros)
    dense = shared.to_dense()
    assert torch.equal(dense.weight, w)
    # Rebuilt from its own dense form, the layer is the same (the k-means is exact on 8 values).
    again = SharedLinear.from_dense(dense, WeightSharingConfig(bits=3))
    assert torch.equal(again.to_dense().weight, dense.weight)
    x = torch.randn(5, 64)
    torch.testing.assert_close(shared(x), dense(x))


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    layer = _pruned_linear(0.5)
    shared = SharedLinear.from_dense(layer, WeightSharingConfig(bits=2))
    x = torch.randn(8, 64)
    # The same loss through a dense weight gives each weight's gradient.
    weight = shared.shared_weight().detach().requires_grad_(True)
    torch.nn.functional.linear(x, weight, shared.bias).square().sum().backward()
    shared(x).square().sum().backward()
    for k in range(4):
        picked = (shared.codes == k) & shared.mask
        torch.testing.assert_close(shared.centroids.grad[k], weight.grad[picked].sum())


def test_fine_tuning_moves_centroids_and_keeps_the_mask():
    layer = _pruned_linear(0.7)
    shared = SharedLinear.from_dense(layer, WeightSharingConfig(bits=3))
    mask, codes = shared.mask.clone(), shared.codes.clone()
    before = shared.centroids.detach().clone()
    opt = torch.optim.SGD(shared.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        shared(torch.randn(16, 64)).square().mean().backward()
        opt.step()
    assert not torch.equal(shared.centroids.detach(), before)
    assert torch.equal(shared.mask, mask) and torch.equal(shared.codes, codes)
    assert torch.equal(shared.shared_weight() == 0, ~mask)


def test_conv_layer_and_packed_state_roundtrip():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    shared = SharedConv2d.from_dense(conv, WeightSharingConfig(bits=4))
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(shared(x), shared.to_dense()(x))
    rebuilt = SharedConv2d.from_spec(shared.spec())
    rebuilt.load_packed_state(shared.packed_state())
    assert torch.equal(rebuilt(x), shared(x))
    # 4-bit codes of 216 weights, one mask bit each, 16 float centroids, 8 biases.
    assert shared.storage_bytes() == 216 * 4 // 8 + 216 // 8 + 16 * 4 + 8 * 4


def test_method_after_pruning_keeps_sparsity_and_notes_centroids():
    torch.manual_seed(0)
    model = modelzip.models.create("lenet300", input_shape=(1, 8, 8))
    recipe = [MagnitudePruneConfig(sparsity=0.8), WeightSharingConfig(bits=3)]
    small, report = modelzip.compress(model, recipe, evaluate=False, measure=False)
    for change in report.layers[-3:]:
        layer = small.get_submodule(change.name)
        assert isinstance(layer, SharedLinear)
        assert abs(layer.sparsity() - 0.8) < 0.01
        assert change.note.startswith("8 centroids")


def test_config_validates():
    with pytest.raises(ConfigError, match="bits"):
        WeightSharingConfig(bits=0)
    with pytest.raises(ConfigError, match="init"):
        WeightSharingConfig(init="kmeans++")
    cfg = WeightSharingConfig(bits=6, init="density")
    assert WeightSharingConfig.from_dict(cfg.to_dict()) == cfg
