"""compress(): copying, bad input, reports, data-driven figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip
from modelzip import Int8Config, MagnitudePruneConfig, compress
from modelzip.core.errors import ModelError
from modelzip.models import create
from modelzip.prune import MaskedLinear


def test_nan_and_inf_weights_are_refused():
    m = create("lenet300")
    with torch.no_grad():
        m.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"fc2\.weight.*NaN"):
        compress(m, MagnitudePruneConfig())
    with torch.no_grad():
        m.fc2.weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match="Inf"):
        compress(m, MagnitudePruneConfig())


def test_not_a_module_is_refused():
    with pytest.raises(ModelError, match=r"nn\.Module"):
        compress("lenet300", MagnitudePruneConfig())  # type: ignore[arg-type]


def test_exact_sparsity_and_mask_persists_through_training():
    m = create("lenet300")
    small, report = compress(m, MagnitudePruneConfig(sparsity=0.9), measure=False)
    for change in report.layers:
        layer = small.get_submodule(change.name)
        assert isinstance(layer, MaskedLinear)
        n = layer.weight.numel()
        assert int((layer.masked_weight() == 0).sum()) == round(0.9 * n)
    opt = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(small(x), y).backward()
        opt.step()
    with torch.inference_mode():
        for change in report.layers:
            layer = small.get_submodule(change.name)
            assert layer.sparsity() == pytest.approx(0.9, abs=1e-3)
            assert int((layer.masked_weight() != 0).sum()) <= round(0.1 * layer.weight.numel())


def test_int8_stores_one_byte_per_weight():
    m = create("lenet300")
    small, report = compress(m, Int8Config(), measure=False)
    for change in report.layers:
        layer = small.get_submodule(change.name)
        weights = layer.codes.numel()
        # codes: 1 byte each; scales: 4 bytes per output channel; bias float32
        assert change.bytes_after == weights + 4 * layer.out_features + 4 * layer.out_features
    assert report.compression > 3.9


def test_int8_error_within_half_step():
    m = create("lenet300")
    small, _ = compress(m, Int8Config(activations="float"), measure=False)
    w = m.fc1.weight
    deq = small.fc1.dequantized_weight()
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((w - deq).abs() <= step / 2 + 1e-7).all()


def test_zero_and_constant_weights_quantize_exactly():
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        fc.weight[0] = 0.0
        fc.weight[1] = 0.25
    m = nn.Sequential(fc)
    small, _ = compress(m, Int8Config(activations="float"), measure=False)
    deq = small[0].dequantized_weight()
    assert torch.equal(deq[0], torch.zeros(4))
    assert torch.allclose(deq[1], torch.full((4,), 0.25))


def test_report_with_data_has_accuracy_macs_and_latency(digits):
    m = create("lenet300", input_shape=[1, 8, 8])
    _, report = compress(m, MagnitudePruneConfig(sparsity=0.5), digits)
    for stats in (report.before, report.after):
        assert 0.0 <= stats.accuracy <= 1.0
        assert stats.latency_ms > 0 and stats.latency_batch == 64
        assert stats.macs == 64 * (64 * 300 + 300 * 100 + 100 * 10)
    assert report.after.effective_macs == pytest.approx(0.5 * report.before.macs, rel=0.01)
    data = report.to_dict()
    assert modelzip.Report.from_dict(data).to_dict() == data


def test_shared_modules_stay_shared():
    shared = nn.Linear(8, 8)
    m = nn.Sequential(shared, nn.ReLU(), shared)
    small, report = compress(m, MagnitudePruneConfig(sparsity=0.5), measure=False)
    assert small[0] is small[2] and isinstance(small[0], MaskedLinear)
    assert len(report.layers) == 1


def test_skipped_layers_are_reported():
    m = create("lenet300")
    _, report = compress(m, [MagnitudePruneConfig(sparsity=0.5), Int8Config()], measure=False)
    assert {s.name for s in report.skipped} == {"fc1", "fc2", "fc3"}
    assert all("already compressed" in s.reason for s in report.skipped)


def test_history_of_recipes_is_kept():
    m = create("lenet300")
    once, _ = compress(m, MagnitudePruneConfig(sparsity=0.5), measure=False)
    twice, _ = compress(once, MagnitudePruneConfig(sparsity=0.8), measure=False)
    assert [s["sparsity"] for s in twice._modelzip_recipe] == [0.5, 0.8]
    assert twice.fc1.sparsity() == pytest.approx(0.8, abs=1e-3)
