"""Joint methods: decomposition with pruning, pruning-aware quantization, quantization-aware
pruning, and the growth of exact zeros as bits fall."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.counting import collect_workloads
from modelzip.core.errors import ConfigError
from modelzip.core.selection import Select
from modelzip.decompose.configs import SVDConfig, Tucker2Config
from modelzip.decompose.lowrank import LowRankLinear
from modelzip.joint.factor_prune import DecomposePruneConfig, FactorPruned
from modelzip.joint.quant_aware_prune import QuantAwareMaskedLinear, QuantAwarePruneConfig
from modelzip.joint.sparse_quant import (
    SparseQuantizeConfig,
    SparseQuantLinear,
    quantized_zero_fraction,
)
from modelzip.models import create
from modelzip.prune import MagnitudePruneConfig
from modelzip.prune.masked import MaskedLinear
from modelzip.prune.schedule import AGPCallback, masked_layers
from modelzip.quantize import QuantizeWeightsConfig


@pytest.fixture
def lenet300() -> nn.Module:
    torch.manual_seed(0)
    return create("lenet300").eval()


@pytest.fixture
def lenet5() -> nn.Module:
    torch.manual_seed(0)
    return create("lenet5").eval()


X = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _compress(model, recipe):
    # The trainable forms: these tests look inside them (masks, factors, codes) and train them.
    return modelzip.compress(model, recipe, sample=X, measure=False, deploy=False)


# ---------------------------------------------------------------- decomposition with pruning
def test_factor_pruning_reaches_exact_sparsity_and_equals_masked_factors(lenet300):
    decomposed, _ = _compress(lenet300, SVDConfig(rank_fraction=0.5))
    pruned, report = _compress(decomposed, DecomposePruneConfig(sparsity=0.7))
    assert [c.after for c in report.layers] == ["FactorPruned"] * 3
    for change in report.layers:
        layer = pruned.get_submodule(change.name)
        inner = decomposed.get_submodule(change.name)
        assert isinstance(layer, FactorPruned) and isinstance(inner, LowRankLinear)
        # Exactly round(0.7·n) entries of each factor are gone, and they are the smallest.
        for name, mask in layer.masks().items():
            n = mask.numel()
            assert n - int(mask.sum()) == round(0.7 * n), name
            w = dict(inner.named_parameters())[name].detach().abs()
            assert w[~mask].max() <= w[mask].min()
        # The layer computes the decomposed layer with its factors multiplied by the masks.
        ref = copy.deepcopy(inner)
        with torch.no_grad():
            ref.first.weight.mul_(layer.masks()["first.weight"])
            ref.second.weight.mul_(layer.masks()["second.weight"])
        h = torch.randn(5, inner.in_features)
        with torch.inference_mode():
            torch.testing.assert_close(layer(h), ref(h), rtol=0, atol=0)
        assert layer.param_count() == inner.param_count() - sum(
            int((~m).sum()) for m in layer.masks().values()
        )
    assert report.after.params < report.before.params
    # The hardware workloads see each factor's sparsity: MACs on kept entries only.
    ops = [w for w in collect_workloads(pruned, X) if w.name.startswith("fc1:")]
    assert len(ops) == 2
    for op in ops:
        assert abs(op.effective_macs - 0.3 * op.macs) <= 0.01 * op.macs


def test_dense_layers_without_a_rank_are_skipped_with_the_reason(lenet300):
    _, report = _compress(lenet300, DecomposePruneConfig(sparsity=0.5, rank_fraction=None))
    assert not report.layers
    assert {s.name for s in report.skipped} == {"fc1", "fc2", "fc3"}
    assert all("no rank_fraction or energy" in s.reason for s in report.skipped)


def test_factor_pruning_of_tucker2_convs_and_save_load(lenet5, tmp_path):
    model = modelzip.models.create("lenet5").eval()
    model.load_state_dict(lenet5.state_dict())
    recipe = [Tucker2Config(rank=4), DecomposePruneConfig(sparsity=0.5)]
    small, report = _compress(model, recipe)
    pruned = [c for c in report.layers if c.method == "decompose_prune"]
    assert {c.name for c in pruned} == {"conv1", "conv2", "fc1", "fc2"}
    conv2 = small.get_submodule("conv2")
    assert type(conv2.inner).__name__ == "Tucker2Conv2d"
    assert set(conv2.factors) == {"first.weight", "core.weight", "last.weight"}
    for s in conv2.factor_sparsity().values():
        assert abs(s - 0.5) < 0.02  # round(0.5·n)/n
    loaded = modelzip.load(modelzip.save(small, tmp_path / "m.mzip"))
    with torch.inference_mode():
        assert torch.equal(loaded(X), small(X))
        dense = copy.deepcopy(small)
        dense.set_submodule("conv2", conv2.to_dense())
        torch.testing.assert_close(dense(X), small(X), rtol=1e-4, atol=1e-5)
    # Fine-tuning keeps pruned factor entries at zero (gradients reach only kept ones).
    small.train()
    opt = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        small(X).square().mean().backward()
        opt.step()
    for name, mask in conv2.masks().items():
        assert torch.all(dict(conv2.inner.named_parameters())[name][~mask] == 0), name


def test_decompose_after_prune(lenet300):
    pruned, _ = _compress(lenet300, MagnitudePruneConfig(sparsity=0.8))
    # Full rank: the decomposition of the pruned weight computes the pruned layer.
    full, report = _compress(
        pruned, DecomposePruneConfig(sparsity=0.0, energy=1.0, rank_fraction=None)
    )
    assert {c.before for c in report.layers} == {"MaskedLinear"}
    assert {c.after for c in report.layers} == {"LowRankLinear"}
    with torch.inference_mode():
        torch.testing.assert_close(full(X), pruned(X), rtol=1e-4, atol=1e-4)
    # Truncated: the factors of the SVD of the pruned weight, which are dense.
    low, _ = _compress(pruned, DecomposePruneConfig(sparsity=0.0, rank_fraction=0.3))
    fc1 = low.get_submodule("fc1")
    assert isinstance(fc1, LowRankLinear)
    want = LowRankLinear.from_dense(
        pruned.get_submodule("fc1").to_dense(), SVDConfig(rank_fraction=0.3)
    )
    torch.testing.assert_close(fc1.weight(), want.weight())
    assert (fc1.factor_in == 0).float().mean() < 0.01
    # Then pruning the factors of the decomposed pruned model works too.
    both, _ = _compress(low, DecomposePruneConfig(sparsity=0.5))
    assert abs(both.get_submodule("fc1").sparsity() - 0.5) < 0.01


def test_decompose_prune_config_checks():
    with pytest.raises(ConfigError, match="sparsity"):
        DecomposePruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="at most one"):
        DecomposePruneConfig(rank_fraction=0.5, energy=0.9)
    cfg = DecomposePruneConfig(sparsity=0.3, rank_fraction=None, energy=0.95)
    assert DecomposePruneConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- pruning-aware quantization
@pytest.mark.parametrize(
    "levels,bits",
    [("uniform-symmetric", 4), ("adaptive", 3), ("log2", 4), ("uniform-symmetric", 1)],
)
def test_pruning_aware_quantization_keeps_zeros_and_pattern(lenet300, levels, bits, tmp_path):
    pruned, _ = _compress(lenet300, MagnitudePruneConfig(sparsity=0.9))
    quant, report = _compress(pruned, SparseQuantizeConfig(bits=bits, levels=levels))
    assert {c.after for c in report.layers} == {"SparseQuantLinear"}
    for name in ("fc1", "fc2", "fc3"):
        before, after = pruned.get_submodule(name), quant.get_submodule(name)
        w = after.dequantized_weight()
        assert torch.equal(after.mask, before.mask)
        assert torch.all(w[~before.mask] == 0)  # every pruned weight exactly zero
        assert after.param_count() == int(before.mask.sum()) + before.bias.numel()
    loaded = modelzip.load(modelzip.save(quant, tmp_path / "q.mzip"))
    with torch.inference_mode():
        assert torch.equal(loaded(X), quant(X))
    # Stored: one mask bit per weight plus `bits` per kept weight (and levels, bias).
    fc1 = quant.get_submodule("fc1")
    n = fc1.mask.numel()
    assert fc1.storage_bytes() < n / 8 + bits * 0.1 * n / 8 + 300 * 4 * 18


def test_plain_weight_quantizer_loses_zeros_that_the_aware_one_keeps(lenet300):
    """Affine levels ``lo + Δ·k`` need not contain zero: quantizing the pruned weights as plain
    weights (masks folded in) turns pruned weights nonzero; the pruning-aware form does not."""
    pruned, _ = _compress(lenet300, MagnitudePruneConfig(sparsity=0.9))
    dense = copy.deepcopy(pruned)
    for name in ("fc1", "fc2", "fc3"):
        dense.set_submodule(name, pruned.get_submodule(name).to_dense())
    affine = {"bits": 3, "levels": "uniform-affine"}
    naive, _ = _compress(dense, QuantizeWeightsConfig(**affine))
    aware, _ = _compress(pruned, SparseQuantizeConfig(**affine))
    mask = pruned.get_submodule("fc1").mask
    assert (naive.get_submodule("fc1").dequantized_weight()[~mask] != 0).any()
    assert torch.all(aware.get_submodule("fc1").dequantized_weight()[~mask] == 0)


def test_sparse_quantize_config_checks():
    with pytest.raises(ConfigError, match="granularity"):
        SparseQuantizeConfig(granularity="group")
    with pytest.raises(ConfigError, match=r"SparseQuantizeConfig\.bits"):
        SparseQuantizeConfig(bits=0)


# ---------------------------------------------------------------- quantization-aware pruning
def test_quant_aware_pruning_keeps_masks_through_training(lenet300, mnist):
    small, _ = _compress(lenet300, QuantAwarePruneConfig(sparsity=0.0, bits=4))
    layers = masked_layers(small)
    assert all(isinstance(m, QuantAwareMaskedLinear) for m in layers.values())
    agp = AGPCallback(0.8, begin_step=0, end_step=20, frequency=5)
    x, y = mnist.x_train[:512], mnist.y_train[:512]
    opt = torch.optim.SGD(small.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    small.train()
    seen: list[dict[str, torch.Tensor]] = []
    for step in range(1, 31):
        idx = torch.arange(16 * (step % 32), 16 * (step % 32) + 16)
        loss = nn.functional.cross_entropy(small(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        agp(small, step, 0)
        masks = {n: m.mask.clone() for n, m in layers.items()}
        for n, m in layers.items():
            # Pruned weights compute as zero (the stored weight may drift under momentum, but
            # only weight·mask is used and stored).
            assert torch.all(m.quantized_weight()[~m.mask] == 0), (n, step)
            if seen:
                assert not torch.any(m.mask & ~seen[-1][n]), (n, step)  # masks only shrink
        seen.append(masks)
    for m in layers.values():
        assert abs(m.sparsity() - 0.8) < 0.01
        # The forward pass uses 4-bit levels: at most 15 distinct values per row.
        assert max(len(r.unique()) for r in m.quantized_weight().detach()) <= 15
    # Storing it with sparse_quantize at the same bits computes exactly what it trained.
    small.eval()
    stored, _ = _compress(small, SparseQuantizeConfig(bits=4))
    with torch.inference_mode():
        torch.testing.assert_close(stored(X), small(X), rtol=0, atol=0)
    assert isinstance(stored.get_submodule("fc1"), SparseQuantLinear)


def test_quant_aware_prune_converts_a_pruned_layer_and_only_adds_to_its_mask(lenet300):
    pruned, _ = _compress(
        lenet300, MagnitudePruneConfig(sparsity=0.5, select=Select(names=("fc1",)))
    )
    qap, _ = _compress(pruned, QuantAwarePruneConfig(sparsity=0.7, bits=3))
    before, after = pruned.get_submodule("fc1"), qap.get_submodule("fc1")
    assert isinstance(before, MaskedLinear) and isinstance(after, QuantAwareMaskedLinear)
    assert not torch.any(after.mask & ~before.mask)
    assert abs(after.sparsity() - 0.7) < 0.01


# ---------------------------------------------------------------- zeros as bits fall (Fig. 20)
def test_zero_fraction_increases_as_bits_decrease():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    fractions = [quantized_zero_fraction(w, "uniform", b) for b in range(8, 1, -1)]
    assert all(b > a for a, b in itertools.pairwise(fractions)), fractions
    # At 2 bits the levels are {-Δ, 0, Δ} with Δ = max|w|: zero below max|w|/2 — most weights.
    assert fractions[-1] > 0.8
    ternary = quantized_zero_fraction(w, "ternary")
    assert 0.3 < ternary < 0.6  # TWN's 0.7·E|w| threshold on Gaussian weights: about 42%
    assert quantized_zero_fraction(w, "binary") == 0.0


def test_pruning_aware_quantization_of_masked_convs_per_tensor(lenet5):
    pruned, _ = _compress(lenet5, MagnitudePruneConfig(sparsity=0.6))
    quant, report = _compress(pruned, SparseQuantizeConfig(bits=5, granularity="tensor"))
    assert {c.after for c in report.layers} == {"SparseQuantConv2d", "SparseQuantLinear"}
    conv = quant.get_submodule("conv2")
    mask = pruned.get_submodule("conv2").mask
    assert torch.equal(conv.mask, mask) and conv.scale.numel() == 1
    w = conv.dequantized_weight()
    assert torch.all(w[~mask] == 0)
    # Kept weights are within half a step of their float values (one scale for the tensor).
    ref = pruned.get_submodule("conv2").masked_weight().detach()
    assert (w - ref)[mask].abs().max() <= conv.scale.item() / 2 + 1e-6
    with torch.inference_mode():
        dense = copy.deepcopy(quant)
        dense.set_submodule("conv2", conv.to_dense())
        torch.testing.assert_close(dense(X), quant(X), rtol=1e-5, atol=1e-5)
