"""The model zoo: every model builds, runs, and rebuilds from its source record."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modelzip.core.errors import ModelError, UnknownNameError
from modelzip.models import (
    build_from_source,
    create,
    list_models,
    model_factory,
    model_info,
    model_source,
    resolve_model,
)


def _is_text(name: str) -> bool:
    return "vocab_size" in model_info(name).defaults


def _example_input(name: str, batch: int = 2) -> torch.Tensor:
    if _is_text(name):
        return torch.randint(0, model_info(name).defaults["vocab_size"], (batch, 16))
    return torch.rand(batch, *model_info(name).input_shape)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_builds_and_runs(name):
    torch.manual_seed(0)
    model = create(name).eval()
    x = _example_input(name)
    out = model(x)
    if _is_text(name):
        assert out.shape == (*x.shape, model_info(name).defaults["vocab_size"])
    else:
        assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert model_info(name).description


@pytest.mark.parametrize("name", list_models())
def test_source_round_trip(name):
    torch.manual_seed(0)
    model = create(name)
    source = model_source(model)
    assert source == {"kind": "zoo", "name": name, "kwargs": {}}
    rebuilt = build_from_source(json.loads(json.dumps(source)))
    rebuilt.load_state_dict(model.state_dict())
    x = _example_input(name)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "count"), [("lenet300", 266_610), ("lenet5", 431_080), ("lenet5_wide", 1_631_626)]
)
def test_published_parameter_counts(name, count):
    assert _num_params(create(name)) == count


def test_layer_names_are_stable():
    names = {n for n, _ in create("lenet300").named_modules()}
    assert {"fc1", "fc2", "fc3"} <= names
    assert {"conv1", "conv2", "fc1", "fc2"} <= {n for n, _ in create("lenet5").named_modules()}
    wide = {n for n, _ in create("lenet5_wide").named_modules()}
    assert {"conv1", "conv2", "fc1", "fc2", "fc3"} <= wide
    assert "layer2.0.shortcut.0" in {n for n, _ in create("resnet_small").named_modules()}


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).dataset == "mnist"])
def test_channels_last(name):
    torch.manual_seed(0)
    model = create(name).eval()
    x = torch.rand(3, 1, 28, 28)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_kwargs_adapt_and_are_recorded():
    model = create("lenet300", input_shape=(1, 8, 8), num_classes=3)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert model_source(model)["kwargs"] == {"input_shape": [1, 8, 8], "num_classes": 3}
    rebuilt = build_from_source(model_source(model))
    assert rebuilt.fc1.in_features == 64


def test_bad_kwargs_and_names():
    with pytest.raises(ModelError, match=r"no argument 'depth'.*accepted"):
        create("lenet300", depth=3)
    with pytest.raises(ModelError, match="lenet5"):
        create("lenet5", input_shape=(1, 8, 8))
    with pytest.raises(ModelError, match="JSON"):
        create("lenet300", num_classes=object())
    with pytest.raises(UnknownNameError, match="unknown model"):
        create("lenet7")


def tiny_factory(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, width))


def not_a_model() -> int:
    return 3


NOT_CALLABLE = 3


def test_factory_reference():
    model = resolve_model(f"{__name__}:tiny_factory", width=5)
    assert model[1].out_features == 5
    source = model_source(model)
    assert source == {"kind": "factory", "ref": f"{__name__}:tiny_factory", "kwargs": {"width": 5}}
    # A build record may come from a file: a factory function runs only with trust.
    with pytest.raises(ModelError, match="not a registered model factory"):
        build_from_source(source)
    assert build_from_source(source, trust_remote_code=True)[1].out_features == 5
    assert model_source(resolve_model("lenet300")) == {
        "kind": "zoo",
        "name": "lenet300",
        "kwargs": {},
    }


class TinyNet(nn.Sequential):
    def __init__(self, width: int = 3) -> None:
        super().__init__(nn.Flatten(), nn.Linear(4, width))


def test_build_from_source_calls_only_registered_classes_without_trust():
    source = {"kind": "factory", "ref": f"{__name__}:TinyNet", "kwargs": {"width": 6}}
    # An nn.Module class's constructor is code too: a file may name it once it is registered.
    with pytest.raises(ModelError, match="not a registered model factory"):
        build_from_source(source)
    model_factory(TinyNet)
    assert build_from_source(source)[1].out_features == 6
    gadget = {"kind": "factory", "ref": "yaml:safe_dump", "kwargs": {"data": [1]}}
    with pytest.raises(ModelError, match="not a registered model factory"):
        build_from_source(gadget)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_package_xyz.models:f", "cannot import"),
        (f"{__name__}:missing", "no attribute 'missing'"),
        (f"{__name__}:NOT_CALLABLE", "not a callable"),
        (f"{__name__}:not_a_model", "not a torch.nn.Module"),
        ("os:system", "standard library"),
        ("nomodule:", "package.module:factory"),
    ],
)
def test_factory_reference_errors(spec, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(spec)


def test_build_from_source_refuses_garbage():
    with pytest.raises(ModelError, match="cannot rebuild"):
        build_from_source({"kind": "pickle"})


def test_lenet5_wide_shape_and_xnor_layers():
    """The wide LeNet-5: MNIST in, 10 logits out, and its hardtanh activations keep the inputs of
    conv2, fc1 and fc2 signed, so XNOR-Net binarizes all three (first and last kept real)."""
    from modelzip import Recipe, compress

    torch.manual_seed(0)
    model = create("lenet5_wide").eval()
    x = torch.rand(8, 1, 28, 28)
    assert model(x).shape == (8, 10)
    recipe = Recipe.from_list([{"method": "xnor_net", "keep_first_last": True}])
    small, report = compress(model, recipe, sample=x, evaluate=False, measure=False, deploy=False)
    binarized = {n for n, m in small.named_modules() if type(m).__name__.startswith("XNOR")}
    assert binarized == {"conv2", "fc1", "fc2"}
    assert {s.name for s in report.skipped} == {"conv1", "fc3"}
    assert small(x).shape == (8, 10)
