"""A later recipe step meets a layer compressed by an earlier one as a whole, never its parts."""

import torch

import modelzip
from modelzip.models import create
from modelzip.recipe import Recipe


def test_prune_after_svd_skips_decomposed_layers_with_a_reason(tmp_path):
    torch.manual_seed(0)
    model = create("lenet5")
    recipe = Recipe.from_list([{"method": "svd"}, {"method": "magnitude_prune", "sparsity": 0.5}])
    sample = torch.rand(2, 1, 28, 28)
    small, report = modelzip.compress(model, recipe, sample=sample)
    decomposed = {c.name for c in report.layers if c.method == "svd"}
    skipped = {s.name: s.reason for s in report.skipped if s.method == "magnitude_prune"}
    assert decomposed and set(skipped) == decomposed
    assert all("decompose_prune" in reason for reason in skipped.values())
    # The factor convs inside the decomposed layers were left alone, so the file round-trips.
    modelzip.save(small, tmp_path / "m.mzip")
    torch.testing.assert_close(modelzip.load(tmp_path / "m.mzip")(sample), small(sample))


def test_quantize_after_svd_skips_decomposed_conv():
    model = create("lenet5")
    recipe = Recipe.from_list([{"method": "svd"}, {"method": "quantize_weights", "bits": 4}])
    small, report = modelzip.compress(model, recipe, sample=torch.rand(2, 1, 28, 28), deploy=False)
    assert {s.name for s in report.skipped} >= {"conv1", "conv2"}
    assert type(small.conv1).__name__ == "ChannelLowRankConv2d"
    assert all(type(m) is torch.nn.Conv2d for m in small.conv1.children())
