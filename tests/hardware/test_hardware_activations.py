"""Measured activation statistics reach the sparse, quantized and speculation engines."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelzip
from modelzip.core.activation_stats import (
    measure_activations,
    measured_workloads,
)
from modelzip.core.counting import collect_workloads
from modelzip.core.errors import ConfigError
from modelzip.core.layer_workload import weight_structure
from modelzip.core.workload import Workload
from modelzip.hardware import SparseSupport, estimate, get_accelerator
from modelzip.recipe import Recipe


def relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    ).eval()


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(20, 30), nn.Linear(30, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def test_relu_zeros_are_measured_per_layer() -> None:
    model, x = relu_net(), torch.randn(2, 3, 8, 8)
    ws = {w.name: w for w in measured_workloads(model, x)}
    with torch.no_grad():
        a1 = F.relu(model[0](x))
        a2 = F.relu(model[2](a1))
    z1, z2 = float((a1 == 0).float().mean()), float((a2 == 0).float().mean())
    assert 0.2 < z1 < 0.8 and 0.2 < z2 < 0.8
    assert ws["0"].act_sparsity == 0.0  # the image has no zeros
    assert ws["0"].out_sparsity == pytest.approx(z1)
    assert ws["2"].act_sparsity == pytest.approx(z1)
    assert ws["2"].out_sparsity == pytest.approx(z2)
    assert ws["5"].act_sparsity == pytest.approx(z2)
    assert ws["5"].out_sparsity == 0.0  # logits: no ReLU after


def test_functional_relu_is_seen_through_the_next_layer() -> None:
    model, x = FunctionalRelu(), torch.randn(4, 20)
    ws = {w.name: w for w in measured_workloads(model, x)}
    with torch.no_grad():
        z = float((F.relu(model.fc1(x)) == 0).float().mean())
    assert z > 0.1
    assert ws["fc1"].out_sparsity == pytest.approx(z)
    assert ws["fc2"].act_sparsity == pytest.approx(z)


def test_sparse_activation_engines_gain_from_measured_sparsity() -> None:
    model, x = relu_net(), torch.randn(1, 3, 8, 8)
    plain = collect_workloads(model, x)
    measured = measured_workloads(model, x)
    for preset in ("cnvlutin", "sparse-both"):
        dense, sparse = estimate(plain, preset), estimate(measured, preset)
        assert sparse.cycles < dense.cycles
        assert sparse.total_energy < dense.total_energy
    # Gating saves energy only: same cycles, less energy (Eyeriss).
    dense, sparse = estimate(plain, "eyeriss-sparse"), estimate(measured, "eyeriss-sparse")
    assert sparse.compute_cycles == dense.compute_cycles
    assert sparse.total_energy < dense.total_energy
    assert sparse.total_energy < estimate(measured, "eyeriss").total_energy


def test_skip_saves_cycles_gate_does_not() -> None:
    w = Workload("l", "conv", "Conv2d", N=1, C=32, K=32, R=3, S=3, P=8, Q=8, H=10, W=10)
    w = dataclasses.replace(w, act_sparsity=0.6, weight_bits=16, act_bits=16)
    base = get_accelerator("os")
    gate = base.replace(sparse=SparseSupport(act_skip="gate"))
    skip = base.replace(sparse=SparseSupport(act_skip="skip"))
    b, g, s = (estimate([w], spec).layers[0] for spec in (base, gate, skip))
    assert g.compute_cycles == b.compute_cycles
    assert s.compute_cycles < 0.7 * b.compute_cycles
    assert g.energy["mac"] < b.energy["mac"] and s.energy["mac"] == pytest.approx(g.energy["mac"])


def test_combined_weight_and_activation_skipping() -> None:
    w = Workload("l", "conv", "Conv2d", N=1, C=64, K=32, R=3, S=3, P=8, Q=8, H=10, W=10)
    w = dataclasses.replace(w, act_sparsity=0.5, weight_sparsity=0.5, weight_structure="nm")
    both = get_accelerator("sparse-both")
    weights = both.replace(sparse=SparseSupport(weight_skip=True))
    acts = both.replace(sparse=SparseSupport(act_skip="skip"))
    e_both, e_w, e_a = (estimate([w], s).layers[0] for s in (both, weights, acts))
    assert e_both.compute_cycles < min(e_w.compute_cycles, e_a.compute_cycles)
    assert e_both.effective_macs == pytest.approx(w.macs * 0.25, rel=1e-6)


def test_activation_bits_of_quantized_layers() -> None:
    model, x = relu_net(), torch.rand(1, 3, 8, 8)
    qat, _ = modelzip.compress(
        model, Recipe.from_list([{"method": "qat", "bits": 4, "act_bits": 4}]), sample=x,
        evaluate=False, measure=False, deploy=False,
    )  # fmt: skip
    assert {w.act_bits for w in measured_workloads(qat, x)} == {4}
    assert {w.act_bits for w in collect_workloads(qat, x)} == {32}  # what it was before
    static, _ = modelzip.compress(
        model, Recipe.from_list([{"method": "int8", "activations": "static"}]), sample=x,
        evaluate=False, measure=False, deploy=False,
    )  # fmt: skip
    assert {w.act_bits for w in measured_workloads(static, x)} == {8}


def test_bit_serial_time_scales_with_measured_activation_bits() -> None:
    model, x = relu_net(), torch.rand(1, 3, 8, 8)
    times = {}
    for bits in (4, 8):
        q, _ = modelzip.compress(
            model, Recipe.from_list([{"method": "qat", "bits": 8, "act_bits": bits}]), sample=x,
            evaluate=False, measure=False, deploy=False,
        )  # fmt: skip
        # Stripes' folds are pipelined: only one fill and drain per layer does not scale with
        # the bits (30 cycles, against streams of a few dozen in this toy net).
        times[bits] = estimate(measured_workloads(q, x), "stripes").cycles
    assert 1.75 < times[8] / times[4] <= 2.0


def test_weight_structure_is_read_from_the_weight() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    assert weight_structure(w) == "unstructured"  # no zeros
    groups = w.clone().reshape(16, 8, 4)
    drop = groups.abs().argsort(-1)[..., :2]  # the two smallest of every four
    nm = groups.scatter(-1, drop, 0.0).reshape(16, 32)
    assert weight_structure(nm) == "nm"
    block = w.clone()
    block[:4, :4] = 0
    block[8:12, 4:8] = 0
    assert weight_structure(block) == "block"
    rows = w.clone()
    rows[3] = 0
    assert weight_structure(rows) == "vector"
    rand = w.clone()
    rand[torch.rand_like(rand) < 0.5] = 0
    assert weight_structure(rand) == "unstructured"
    kernels = torch.randn(8, 4, 3, 3)
    kernels[0, 1] = 0
    kernels[5, 2] = 0
    assert weight_structure(kernels) == "block"


@pytest.mark.parametrize(
    ("step", "structure"),
    [
        ({"method": "nm_prune", "n": 2, "m": 4}, "nm"),
        ({"method": "vector_prune", "sparsity": 0.5}, "vector"),
        ({"method": "magnitude_prune", "sparsity": 0.5}, "unstructured"),
    ],
)
def test_pruned_models_are_marked_and_costed_structured(step: dict, structure: str) -> None:
    model, x = relu_net(), torch.rand(1, 3, 8, 8)
    small, _ = modelzip.compress(
        model, Recipe.from_list([step]), sample=x, evaluate=False, measure=False, deploy=False
    )
    ws = collect_workloads(small, x)
    # Only the pruned layers carry a pattern (N:M skips conv 0: its fan-in 27 is not a multiple
    # of 4); a layer without zeros is "unstructured" and costs the same either way.
    assert {w.weight_structure for w in ws if w.weight_sparsity > 0} == {structure}
    spec = get_accelerator("cambricon-x")
    default = estimate(ws, spec)
    as_structured = estimate(ws, spec, structured=True)
    if structure == "unstructured":
        assert default.cycles > as_structured.cycles  # lanes wait for the slowest
    else:
        assert default.cycles == as_structured.cycles


def predicted_net() -> tuple[nn.Sequential, dict]:
    from modelzip.prune.predict import attach_predictors

    model = relu_net()
    found = attach_predictors(model, "low_precision", bits=4, margin=1.0)
    return model, found


def test_predictor_statistics_are_measured() -> None:
    model, found = predicted_net()
    x = torch.randn(2, 3, 8, 8)
    stats = measure_activations(model, x, [w.name for w in collect_workloads(model, x)])
    for name, layer in found.items():
        assert stats[name].predicted_skip == pytest.approx(layer.skipped / layer.outputs)
        assert stats[name].predicted_skip > 0
        assert stats[name].predictor_cost == pytest.approx(layer.predictor_macs / layer.macs_total)
    # The predictor layers compute with their own folded weight: counting's hooks miss them, the
    # measured workloads put them back, in order, with their statistics.
    assert [w.name for w in collect_workloads(model, x)] == ["5"]
    ws = measured_workloads(model, x)
    assert [w.name for w in ws] == ["0.layer", "2.layer", "5"]
    assert ws[0].predicted_skip > 0 and ws[1].predicted_skip > 0
    assert ws[1].act_sparsity > 0 and ws[2].act_sparsity > 0
    assert ws[0].macs == 3 * 8 * 9 * 64 * 2


def test_speculation_engines_follow_the_predictor() -> None:
    model, _ = predicted_net()
    x = torch.randn(1, 3, 8, 8)
    ws = measured_workloads(model, x)
    none = [dataclasses.replace(w, predicted_skip=0.0, out_sparsity=0.0) for w in ws]
    for preset in ("snapea", "predict-execute"):
        with_stats, without = estimate(ws, preset), estimate(none, preset)
        assert with_stats.cycles < without.cycles
        assert with_stats.total_energy < without.total_energy
    # More predicted zeros, fewer full-precision MACs on the decoupled engine.
    w = ws[0]
    lo, hi = (dataclasses.replace(w, predicted_skip=f, predictor_cost=0.2) for f in (0.2, 0.6))
    e_lo, e_hi = (estimate([v], "predict-execute").layers[0] for v in (lo, hi))
    assert e_hi.effective_macs < e_lo.effective_macs
    assert e_hi.compute_cycles < e_lo.compute_cycles
    # A dense layer (nothing caught) on the decoupled engine pays the predictor pass.
    dense = dataclasses.replace(w, predicted_skip=0.0, out_sparsity=0.0)
    plain = get_accelerator("predict-execute").replace(sparse=SparseSupport())
    assert (
        estimate([dense], "predict-execute").layers[0].compute_cycles
        > estimate([dense], plain).layers[0].compute_cycles
    )


def test_one_output_sparsity_engine_at_a_time() -> None:
    with pytest.raises(ConfigError, match="output_speculation"):
        SparseSupport(output_speculation=True, output_prediction=True)
    with pytest.raises(ConfigError, match="predictor_bits"):
        SparseSupport(output_prediction=True, predictor_bits=0)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(a) * b)


def test_a_tuple_sample_is_unpacked_as_counting_does() -> None:
    a, b = torch.tensor([[1.0, -1.0, 2.0, -2.0, 3.0, -3.0]]), torch.ones(1, 6)
    (w,) = measured_workloads(TwoInputs(), (a, b))
    assert w.act_sparsity == pytest.approx(0.5)
