"""Sensitivity analysis: curve shapes, the no-op knob, the validation split, workers, plots."""

from __future__ import annotations

import pytest
import torch

from modelzip.baselines import pretrained
from modelzip.core.errors import ConfigError
from modelzip.joint.sensitivity import (
    SensitivityConfig,
    plot_sensitivity,
    run_sensitivity,
    validation_split,
)

SMALL = SensitivityConfig(
    rank_fractions=(0.05, 0.5),
    bit_widths=(1, 8),
    sparsities=(0.0, 0.5, 0.99),
    validation_size=400,
)


@pytest.fixture(scope="module")
def lenet300() -> torch.nn.Module:
    return pretrained("lenet300", "mnist", progress=False).eval()


@pytest.fixture(scope="module")
def result(lenet300, mnist):
    torch.set_num_threads(1)
    return run_sensitivity(lenet300, mnist, SMALL, model_name="lenet300")


def test_one_curve_per_layer_and_method(result):
    pairs = {(c.layer, c.method) for c in result.curves}
    layers = {"fc1", "fc2", "fc3"}
    assert pairs == {(lyr, m) for lyr in layers for m in SMALL.methods}
    for c in result.curves:
        assert c.values == SMALL.values(c.method)
        assert len(c.accuracy) == len(c.values)
        assert all(0.0 <= a <= 1.0 for a in c.accuracy)
        assert c.knob == {"svd": "rank_fraction", "quantize_weights": "bits"}.get(
            c.method, "sparsity"
        )


def test_keeping_every_weight_is_the_baseline_exactly(result):
    for c in result.curves:
        if c.method == "magnitude_prune":
            assert c.accuracy[c.values.index(0.0)] == result.baseline_accuracy


def test_trends_where_guaranteed(result):
    """8-bit weights stay within a point of the baseline; 1-bit weights or 99% sparsity in the
    first layer lose far more than that (the knob is really applied)."""
    base = result.baseline_accuracy
    assert base > 0.95
    for c in result.curves:
        if c.method == "quantize_weights":
            assert abs(c.accuracy[1] - base) <= 0.01, c
            assert c.accuracy[0] <= c.accuracy[1]
        if c.method == "magnitude_prune":
            assert c.accuracy[2] <= c.accuracy[0]
    fc1_prune = result.curve("fc1", "magnitude_prune")
    assert fc1_prune is not None and fc1_prune.accuracy[2] < base - 0.05


def test_document_schema(result):
    doc = result.to_dict()
    assert set(doc) == {"model", "dataset", "baseline_accuracy", "curves"}
    assert doc["model"] == "lenet300" and doc["dataset"] == "mnist"
    assert set(doc["curves"][0]) == {"layer", "method", "knob", "values", "accuracy"}


def test_validation_split_is_the_held_out_training_part(mnist):
    x, y = validation_split(mnist, 300)
    _, (xv, yv) = mnist.split(5000, seed=0)
    assert torch.equal(x, xv[:300]) and torch.equal(y, yv[:300])
    assert not torch.equal(x, mnist.x_test[:300])


def test_workers_give_the_same_curves(lenet300, mnist):
    config = SensitivityConfig(
        methods=("magnitude_prune",), sparsities=(0.0, 0.9), validation_size=200
    )
    one = run_sensitivity(lenet300, mnist, config)
    two = run_sensitivity(lenet300, mnist, config.replace(workers=2))
    assert [c.to_dict() for c in one.curves] == [c.to_dict() for c in two.curves]


def test_plots_one_png_per_method(result, tmp_path):
    paths = plot_sensitivity(result, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"sensitivity-{m}.png" for m in SMALL.methods)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"methods": ("nope",)}, "methods"),
        ({"bit_widths": (0,)}, "bit_widths"),
        ({"sparsities": (1.0,)}, "sparsities"),
        ({"rank_fractions": (0.0,)}, "rank_fractions"),
        ({"validation_size": 0}, "validation_size"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        SensitivityConfig(**changes)


def test_config_round_trips():
    config = SensitivityConfig(methods=("tucker2", "magnitude_prune"), workers=2)
    assert SensitivityConfig.from_dict(config.to_dict()) == config
