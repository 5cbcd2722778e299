"""Composition as a rule: any method applies to the parameters a compressed layer holds.

Every ordered pair of one representative method per family either works (both methods in the
Report, on the same layers or their parts; the output finite and near the first method's alone;
save -> load bit-exact), or the second declares it passes the first's layers by (each skipped
with its reason), or the recipe is refused when built, naming both steps and why.
"""

from __future__ import annotations

import functools
import itertools
import json

import pytest
import torch
from torch import nn

import modelzip
from modelzip.cli import main
from modelzip.core.counting import count_params, module_bytes
from modelzip.core.errors import ConfigError
from modelzip.core.registry import get_method
from modelzip.models import create
from modelzip.models.shapes import model_input_shape
from modelzip.recipe import Recipe

#: One method per family (two where the family has a layer and a whole-model kind, or a conv and
#: a linear kind), each at a setting mild enough that its error on its own is small.
STEPS = {
    "depthwise_separable": {"depth_multiplier": 4},  # compact
    "tucker2": {"rank_fraction": 0.75},  # decompose, conv
    "svd": {"rank_fraction": 0.75},  # decompose, conv and linear
    "quantize_weights": {"bits": 8},  # quantize
    "int8": {},  # quantize
    "magnitude_prune": {"sparsity": 0.2},  # prune, element-wise
    "channel_prune": {"sparsity": 0.1},  # prune, whole channels
    "weight_sharing": {"bits": 6},  # joint
}
#: Relative output error a second step may add to the first step's output, by method: 8-bit
#: codes and 64 centroids move each weight by well under 1% of its range; removing the 20%
#: smallest weights or 10% of channels (no fine-tuning) moves the output of a random network
#: more; a restructuring step after channel pruning is checked only for finiteness.
TOLERANCE = {
    "quantize_weights": 0.05,
    "int8": 0.05,
    "weight_sharing": 0.1,
    "magnitude_prune": 0.5,
    "channel_prune": 1.5,
}
SAMPLE = torch.rand(4, 1, 28, 28)


def step(method: str) -> dict:
    return {"method": method, **STEPS[method]}


def compressed(recipe: list[dict], model: torch.nn.Module):
    return modelzip.compress(
        model, Recipe.from_list(recipe), sample=SAMPLE, deploy=False, measure=False
    )


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("lenet5").eval()


@pytest.mark.parametrize("second", list(STEPS))
@pytest.mark.parametrize("first", list(STEPS))
def test_every_ordered_pair_composes_or_is_refused(first, second, model, tmp_path):
    first_comp = get_method(first).composition
    second_comp = get_method(second).composition
    assert first_comp is not None and second_comp is not None  # every representative declares
    if first_comp.gives not in second_comp.takes | second_comp.passes:
        with pytest.raises(ConfigError) as e:
            Recipe.from_list([step(first), step(second)])
        message = str(e.value)
        assert first in message and second in message and "cannot follow" in message
        assert second_comp.reason(second, first_comp.gives) in message
        return
    alone, _ = compressed([step(first)], model)
    both, report = compressed([step(first), step(second)], model)
    firsts = {c.name for c in report.layers if c.method == first}
    seconds = {c.name for c in report.layers if c.method == second}
    if first_comp.gives in second_comp.passes:
        # Declared to pass by: the second step leaves every layer the first changed alone, with
        # the reason, and the model is the first step's.
        skipped = {s.name for s in report.skipped if s.method == second}
        assert firsts and not seconds and firsts <= skipped
        with torch.no_grad():
            torch.testing.assert_close(both(SAMPLE), alone(SAMPLE))
        return
    assert firsts and seconds
    if first != "channel_prune":  # the others leave layers (or parts) the second step changes
        assert any(s == f or s.startswith(f + ".") for s in seconds for f in firsts)
    with torch.no_grad():
        y_alone, y_both = alone(SAMPLE), both(SAMPLE)
    assert torch.isfinite(y_both).all()
    if second in TOLERANCE and first != second:
        error = float((y_both - y_alone).norm() / y_alone.norm())
        assert error < TOLERANCE[second], (first, second, error)
    path = modelzip.save(both, tmp_path / "m.mzip")
    with torch.no_grad():  # int8 layers run their integer kernel without autograd only
        torch.testing.assert_close(modelzip.load(path)(SAMPLE), y_both, rtol=0, atol=0)


def test_a_decomposed_conv_is_quantized_in_its_factors(model, tmp_path):
    small, report = compressed([step("tucker2"), {"method": "quantize_weights", "bits": 4}], model)
    names = {c.name for c in report.layers if c.method == "quantize_weights"}
    assert {"conv2.first", "conv2.core", "conv2.last"} <= names
    assert type(small.conv2).__name__ == "Tucker2Conv2d"
    assert type(small.conv2.core).__name__ == "QuantConv2d"
    spec = small.conv2.spec()
    assert set(spec["parts"]) == {"first", "core", "last"}
    # The dense form is the product of the quantized factors.
    with torch.no_grad():
        x = torch.rand(2, 20, 12, 12)
        torch.testing.assert_close(small.conv2.to_dense()(x), small.conv2(x), atol=1e-4, rtol=1e-4)
    assert small.conv2.storage_bytes() < sum(
        p.numel() * 4 for p in small.conv2.to_dense().parameters()
    )


def test_svd_factors_of_a_linear_are_pruned_and_quantized(tmp_path):
    torch.manual_seed(0)
    model = create("lenet300").eval()
    x = torch.rand(4, *model_input_shape(model))
    svd = {"method": "svd", "rank_fraction": 0.5}
    recipe = [svd, {"method": "magnitude_prune", "sparsity": 0.5}, {"method": "quantize_weights"}]
    lowrank, _ = compressed([svd], model)
    small, report = compressed(recipe, model)
    fcs = ["fc1", "fc2", "fc3"]
    parts = {f"{fc}.{p}" for fc in fcs for p in ("first", "second")}
    for method in ("magnitude_prune", "quantize_weights"):
        assert {c.name for c in report.layers if c.method == method} == parts
    for fc in fcs:
        layer = small.get_submodule(fc)
        assert type(layer).__name__ == "LowRankLinear"
        assert {type(p).__name__ for p in (layer.first, layer.second)} == {"SparseQuantLinear"}
        first, second = layer.first.to_dense(), layer.second.to_dense()
        assert float((first.weight == 0).float().mean()) >= 0.5
        # Forward is the composed simulation: the product of the pruned, quantized factors.
        h = torch.rand(5, layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(h), second(first(h)), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer.to_dense()(h), layer(h), rtol=1e-4, atol=1e-4)
        # The sum: the layer counts and stores what its compressed factors do.
        assert layer.param_count() == layer.first.param_count() + layer.second.param_count()
        assert layer.storage_bytes() == (layer.first.storage_bytes() + layer.second.storage_bytes())
        assert layer.storage_bytes() < lowrank.get_submodule(fc).storage_bytes() / 4
    assert report.after.params == count_params(small)
    assert report.after.size_bytes == module_bytes(small)
    assert report.after.size_bytes < module_bytes(lowrank) / 4
    path = modelzip.save(small, tmp_path / "m.mzip")
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(x), small(x), rtol=0, atol=0)


def test_pruned_layers_are_quantized_keeping_the_mask(model):
    small, report = compressed([step("magnitude_prune"), step("quantize_weights")], model)
    assert type(small.fc1).__name__ == "SparseQuantLinear"
    notes = [c.note for c in report.layers if c.method == "quantize_weights"]
    assert all("mask kept" in n for n in notes)
    assert float((small.fc1.to_dense().weight == 0).float().mean()) >= 0.2


@pytest.mark.parametrize("name", ["vgg_small", "resnet_small"])
@pytest.mark.parametrize(
    "recipe",
    [
        [{"method": "tucker2"}, {"method": "quantize_weights"}],
        [{"method": "svd"}, {"method": "magnitude_prune"}, {"method": "quantize_weights"}],
        [{"method": "channel_prune"}, {"method": "depthwise_separable"}, {"method": "int8"}],
    ],
    ids=["tucker2+quantize_weights", "svd+magnitude_prune+quantize_weights", "cp+dws+int8"],
)
def test_the_issue_recipes_end_to_end(name, recipe, tmp_path):
    torch.manual_seed(0)
    model = create(name).eval()
    x = torch.rand(4, *model_input_shape(model))
    small, report = modelzip.compress(model, Recipe.from_list(recipe), sample=x, measure=False)
    methods = {c.method for c in report.layers}
    assert methods == {s["method"] for s in recipe}
    last = recipe[-1]["method"]
    assert any("." in c.name for c in report.layers if c.method == last)  # inside a layer
    assert report.after.size_bytes < report.before.size_bytes
    with torch.no_grad():
        y = small(x)
    assert torch.isfinite(y).all()
    path = modelzip.save(small, tmp_path / "m.mzip")
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("multiplier", [1, 3])
def test_channels_are_pruned_inside_depthwise_separable_blocks(multiplier, tmp_path):
    torch.manual_seed(0)
    model = create("vgg_small").eval()
    x = torch.rand(4, *model_input_shape(model))
    dws = {"method": "depthwise_separable", "depth_multiplier": multiplier}
    prune = {"method": "channel_prune", "sparsity": 0.5}
    run = functools.partial(modelzip.compress, sample=x, measure=False, deploy=False)
    blocks, _ = run(model, Recipe.from_list([dws]))
    pruned, report = run(model, Recipe.from_list([dws, prune]))
    changed = {c.name for c in report.layers if c.method == "channel_prune"}
    assert {"conv2.depthwise", "conv2.pointwise", "conv1.pointwise"} <= changed
    assert report.after.params < count_params(blocks)
    convs = [m for m in pruned.modules() if type(m) is nn.Conv2d]
    assert len(convs) == 10
    # Every conv's input channels are its producer's outputs (BN, ReLU and pooling between).
    for producer, consumer in itertools.pairwise(convs):
        assert consumer.in_channels == producer.out_channels
    assert pruned.fc1.in_features == convs[-1].out_channels < blocks.fc1.in_features
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        block = pruned.get_submodule(name)
        assert type(block).__name__ == "DepthwiseSeparableConv2d"
        assert block.depthwise.out_channels == multiplier * block.depthwise.in_channels
        # The block follows its pieces: its geometry, dense form and saved spec.
        assert (block.in_channels, block.out_channels) == (
            block.depthwise.in_channels,
            block.pointwise.out_channels,
        )
        h = torch.rand(2, block.in_channels, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block.to_dense()(h), block(h), rtol=1e-4, atol=1e-4)
    assert pruned.conv2.in_channels < blocks.conv2.in_channels
    with torch.no_grad():
        assert pruned(x).shape == blocks(x).shape
    # Then int8: the recipe of the issue, saved and loaded bit-exact.
    small, report = run(model, Recipe.from_list([dws, prune, {"method": "int8"}]))
    assert {c.method for c in report.layers} == {"depthwise_separable", "channel_prune", "int8"}
    assert "conv2.pointwise" in {c.name for c in report.layers if c.method == "int8"}
    assert report.after.size_bytes < module_bytes(blocks) / 4
    with torch.no_grad():
        y = small(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    path = modelzip.save(small, tmp_path / "m.mzip")
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(x), y, rtol=0, atol=0)


def test_channels_between_the_parts_of_a_decomposed_layer_stay():
    torch.manual_seed(0)
    model = create("lenet5").eval()
    recipe = [step("tucker2"), {"method": "channel_prune", "sparsity": 0.5}]
    small, report = compressed(recipe, model)
    before, _ = compressed([step("tucker2")], model)
    reasons = {s.name: s.reason for s in report.skipped if s.method == "channel_prune"}
    assert "are its own setting" in reasons["conv2.first"]
    # The ranks stay; the outer channels follow the first and last factors.
    assert small.conv2.first.out_channels == before.conv2.first.out_channels
    assert small.conv2.core.weight.shape == before.conv2.core.weight.shape
    assert small.conv2.out_channels == small.conv2.last.out_channels < before.conv2.out_channels
    assert small.conv2.in_channels == small.conv2.first.in_channels == small.conv1.out_channels
    assert small.conv2.spec()["conv"]["out_channels"] == small.conv2.out_channels
    with torch.no_grad():
        h = torch.rand(2, small.conv2.in_channels, 12, 12)
        torch.testing.assert_close(small.conv2.to_dense()(h), small.conv2(h), atol=1e-4, rtol=1e-4)


def test_refused_at_construction_with_the_order_that_works():
    with pytest.raises(ConfigError, match=r"step 1 \(magnitude_prune\) cannot follow step 0 "):
        Recipe.from_list([{"method": "int8"}, {"method": "magnitude_prune"}])
    with pytest.raises(ConfigError, match="apply them to different layers"):
        Recipe.from_list([{"method": "int8"}, {"method": "magnitude_prune"}])  # int8 keeps no mask
    with pytest.raises(ConfigError, match="put magnitude_prune before quantize_weights"):
        Recipe.from_list([{"method": "quantize_weights"}, {"method": "magnitude_prune"}])
    with pytest.raises(ConfigError, match="restructuring a pruned layer"):
        Recipe.from_list([{"method": "magnitude_prune"}, {"method": "tucker2"}])
    # Pruning some layers, then int8: int8 quantizes the others (declared to pass pruned ones).
    Recipe.from_list([{"method": "magnitude_prune"}, {"method": "int8"}])
    # Channel pruning follows a restructured layer's pieces; it does not take masked weights.
    Recipe.from_list([{"method": "depthwise_separable"}, {"method": "channel_prune"}])
    with pytest.raises(ConfigError, match="prune channels first"):
        Recipe.from_list([{"method": "magnitude_prune"}, {"method": "channel_prune"}])
    # Steps on different layers do not meet.
    Recipe.from_list(
        [
            {"method": "int8", "select": {"names": ["fc1"]}},
            {"method": "magnitude_prune", "select": {"names": ["fc2"]}},
        ]
    )


def test_cli_compress_with_a_composed_recipe(capsys, tmp_path, model):
    source = modelzip.save(model, tmp_path / "lenet5.mzip")  # a file: no baseline to train
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- {method: tucker2}\n- {method: quantize_weights, bits: 4}\n")
    out = tmp_path / "c.mzip"
    argv = ["compress", str(source), "--recipe", str(recipe), "--out", str(out)]
    code = main([*argv, "--json", "--no-latency"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"conv2.core", "conv2.first"} <= {
        c["name"] for c in report["layers"] if c["method"] == "quantize_weights"
    }
    modelzip.load(out)

    recipe.write_text("- {method: quantize_weights}\n- {method: tucker2}\n")
    assert main(argv) != 0
    assert "cannot follow" in capsys.readouterr().err
