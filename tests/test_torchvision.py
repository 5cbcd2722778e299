"""torchvision's classification models through modelzip (#21): channel pruning of any traceable
CNN, save/load without a hand-written source, layers whose weight the model reads directly, and
the CLI on such models. Random weights, small inputs; the whole zoo x every method is the slow
lane (``make test-slow``, benchmarks/torchvision_matrix.py, docs/models.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.errors import ModelError
from modelzip.models.torchvision_compat import classification_models, import_torchvision
from modelzip.prune.channels import ChannelPruneConfig
from modelzip.quantize import Int8Config


def _load_matrix():
    """benchmarks/torchvision_matrix.py by file path: putting benchmarks/ on ``sys.path`` would let
    ``import kernels`` (transformers' hub-kernels probe) find benchmarks/kernels.py."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torchvision_matrix.py"
    spec = importlib.util.spec_from_file_location("torchvision_matrix", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torchvision_matrix"] = module  # spawned workers pickle its functions by name
    spec.loader.exec_module(module)
    return module


_matrix = _load_matrix()
CELLS = _matrix.CELLS
MIN_CHANNEL_REMOVAL = _matrix.MIN_CHANNEL_REMOVAL
conv_inputs_match = _matrix.conv_inputs_match
run_model = _matrix.run_model

tv = import_torchvision()

#: The fast lane's representatives: residual adds, channels-last blocks, squeeze-excitation,
#: dense concatenations, grouped convs, MNASNet's versioned state dict.
FAST = {
    "resnet18": 64,
    "resnet50": 64,
    "convnext_tiny": 32,
    "efficientnet_b0": 64,
    "densenet121": 64,
    "regnet_x_400mf": 64,
    "mobilenet_v3_small": 64,
    "mnasnet0_5": 64,
}


def _build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return tv.models.get_model(name, weights=None).eval(), torch.randn(2, 3, size, size)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_torchvision_imports_with_the_cpu_torch():
    names = classification_models()
    assert {"resnet18", "convnext_tiny", "swin_t", "regnet_x_400mf"} <= set(names)
    assert len(names) >= 70
    # The model definitions work; the compiled ops (detection's NMS) need torchvision's own
    # build, and calling one fails with torch's error instead of breaking the import.
    assert isinstance(tv.models.resnet18(), nn.Module)


@pytest.mark.parametrize("name", sorted(FAST))
def test_channel_prune_halves_every_group(name):
    model, x = _build(name, FAST[name])
    with torch.no_grad():
        ref = model(x)
    small, report = modelzip.compress(  # exact widths: each group loses round(C/2) channels
        model, [ChannelPruneConfig(sparsity=0.5, round_to=1)], sample=x, measure=False,
        deploy=False,
    )  # fmt: skip
    removed = 1 - _params(small) / _params(model)
    assert removed >= MIN_CHANNEL_REMOVAL, f"{name}: only {removed:.0%} removed"
    with torch.no_grad():
        assert small(x).shape == ref.shape
    assert conv_inputs_match(small, x) == []
    # The classifier's outputs are the model's: left alone, and the Report says why.
    assert any("reach the model's output" in s.reason for s in report.skipped)
    # Every pruned producer lost half of its channels (rounded).
    for change in report.layers:
        old, new = (int(v) for v in change.note.split(" ")[0].split("->"))
        # A producer loses half its channels; a consumer only its inputs (params drop).
        halved = new == old - round(0.5 * old)
        assert halved or (new == old and change.params_after < change.params_before), change


def test_channel_prune_residual_groups_of_resnet18_are_pruned_together():
    model, x = _build("resnet18", 64)
    small, _ = modelzip.compress(
        model, [ChannelPruneConfig(sparsity=0.5)], sample=x, measure=False, deploy=False
    )
    # layer1's residual stream (stem conv, every block's second conv) is one group: 64 -> 32.
    assert small.conv1.out_channels == 32
    assert small.layer1[0].conv2.out_channels == small.layer1[1].conv2.out_channels == 32
    assert small.layer2[0].downsample[0].out_channels == small.layer2[0].conv2.out_channels
    assert small.fc.in_features == 256 and small.fc.out_features == 1000


def test_convnext_layer_scale_and_layer_norm_follow_the_group():
    model, x = _build("convnext_tiny", 32)
    small, _ = modelzip.compress(
        model, [ChannelPruneConfig(sparsity=0.5)], sample=x, measure=False, deploy=False
    )
    block = small.features[1][0]
    width = block.block[0].out_channels  # the depthwise conv carries the stream's channels
    assert width == 48
    assert block.layer_scale.shape == (48, 1, 1)
    assert block.block[2].normalized_shape == (48,)
    assert block.block[3].in_features == 48 and block.block[3].out_features == 192
    assert small.features[2][0].normalized_shape == (48,)  # LayerNorm2d, traced through


class _Untraceable(nn.Module):
    """A block with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.odd = _Untraceable()
        self.c = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.odd(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.head(torch.relu(self.c(x)).mean((2, 3)))


def test_an_untraceable_block_is_kept_opaque_and_the_rest_pruned():
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 8, 8)
    small, report = modelzip.compress(
        model, [ChannelPruneConfig(sparsity=0.5)], sample=x, measure=False, deploy=False
    )
    assert small.a.out_channels == 8 and small.b.in_channels == 8
    assert small.c.out_channels == 8 and small.head.in_features == 8
    assert small.b.out_channels == 8  # feeds the opaque block: fixed
    reasons = {s.name: s.reason for s in report.skipped}
    assert "kept opaque" in reasons["odd"]
    assert "odd" in reasons["b"] and "does not follow" in reasons["b"]
    assert small(x).shape == (2, 4)


class _DirectReader(nn.Module):
    """Reads a layer's weight itself, as torchvision's Swin attention does with qkv."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.linear(x, self.qkv.weight, self.qkv.bias)
        return self.out(torch.relu(h))


def test_a_weight_the_model_reads_directly_is_left_alone_with_the_reason():
    torch.manual_seed(0)
    model, x = _DirectReader().eval(), torch.randn(4, 16)
    small, report = modelzip.compress(model, [Int8Config()], sample=x, measure=False)
    assert type(small.qkv) is nn.Linear and type(small.out).__name__.startswith("Int8")
    (skip,) = [s for s in report.skipped if s.name == "qkv"]
    assert "reads the layer's weight tensor directly" in skip.reason
    assert small(x).shape == (4, 4)


@pytest.mark.parametrize("name", ["resnet18", "regnet_x_400mf", "mnasnet0_5"])
def test_save_load_bit_exact_without_a_source(tmp_path, name):
    model, x = _build(name, 64)
    assert getattr(model, "_modelzip_source", None) is None  # built without modelzip
    pruned, _ = modelzip.compress(
        model, [ChannelPruneConfig(sparsity=0.5)], sample=x, measure=False, deploy=False
    )
    for i, m in enumerate((model, pruned)):
        path = modelzip.save(m, tmp_path / f"{i}.mzip")
        back = modelzip.load(path)  # no trust needed: an allow-listed constructor
        with torch.no_grad():
            assert torch.equal(m(x), back(x))
    source = modelzip.serialize.read_metadata(tmp_path / "1.mzip")["source"]
    assert source["ref"].startswith("torchvision.models.") and source["kwargs"] == {}


def test_a_file_may_not_make_load_download_weights_or_call_other_code(tmp_path):
    from modelzip.models import build_from_source

    ref = "torchvision.models.resnet:resnet18"
    with pytest.raises(ModelError, match="may not set"):
        build_from_source({"kind": "factory", "ref": ref, "kwargs": {"weights": "DEFAULT"}})
    # A torchvision function that is no model constructor is not on the allow-list.
    with pytest.raises(ModelError, match="not a registered model factory"):
        build_from_source({"kind": "factory", "ref": "torchvision.io:write_png", "kwargs": {}})
    model = build_from_source({"kind": "factory", "ref": ref, "kwargs": {"num_classes": 7}})
    assert model.fc.out_features == 7


def test_infer_source_finds_the_constructor_and_its_num_classes():
    from modelzip.models import infer_source

    m = tv.models.mobilenet_v3_small(num_classes=10)
    assert infer_source(m) == {
        "kind": "factory",
        "ref": "torchvision.models.mobilenetv3:mobilenet_v3_small",
        "kwargs": {"num_classes": 10},
    }
    assert infer_source(nn.Linear(2, 2)) is None


def _image_folder(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            a = (torch.rand(20 + i, 24, 3, generator=g) * 80 + 60 * c).to(torch.uint8)
            Image.fromarray(a.numpy()).save(root / f"c{c}" / f"{i}.png")
    return root


def test_cli_compresses_inspects_and_exports_a_torchvision_model(tmp_path, capsys):
    from modelzip.cli import main

    data = _image_folder(tmp_path / "imgs")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- method: channel_prune\n  sparsity: 0.5\n")
    out = tmp_path / "m.mzip"
    args = ["compress", "torchvision.models:mobilenet_v3_small", "--dataset", str(data)]
    args += ["--image-size", "32", "--recipe", str(recipe), "--out", str(out), "--no-latency"]
    assert main([*args, "--finetune-epochs", "1", "--no-deploy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["after"]["params"] < 0.7 * report["before"]["params"]
    assert main(["inspect", str(out), "--input-shape", "3,32,32", "--no-latency", "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["params"] == report["after"]["params"]  # the file holds the pruned model
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(out), "--format", "onnx", "--out", str(onnx_path),
                 "--input-shape", "3,32,32"]) == 0  # fmt: skip
    assert onnx_path.stat().st_size > 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    assert main(["estimate", str(out), "--input-shape", "3,32,32", "--json"]) == 0
    estimated = json.loads(capsys.readouterr().out)
    assert estimated["totals"]["macs"] == inspected["macs"] > 0  # the pruned model's MACs


@pytest.mark.slow
@pytest.mark.parametrize("name", classification_models())
def test_matrix(name):
    """Every cell of docs/models.md's row for ``name`` passes or is a refusal with a reason."""
    row = run_model(name)
    for cell in CELLS:
        entry = row[cell]
        assert entry["status"] in ("pass", "refused"), f"{name} {cell}: {entry['detail']}"
        if entry["status"] == "refused":
            assert entry["detail"], f"{name} {cell}: a refusal needs its reason"
    # Every model saves, loads and quantizes; only pruning and decomposition may refuse a layer.
    assert row["save_load"]["status"] == row["int8"]["status"] == "pass", row
