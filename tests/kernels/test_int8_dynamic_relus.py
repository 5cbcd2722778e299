"""ReLUs run in the output of the dynamic int8 linears on the native kernel before them
(:mod:`modelzip.kernels.int8_dynamic_relus`): the same outputs as the unlinked model, on the
kernel and where it does not run (fbgemm then, the ReLU after it); only ReLUs that read nothing
but such a layer, called once; chosen by deploy, saved, loaded and undone."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import modelzip
from modelzip.core.context import replace_module
from modelzip.core.forms import build_form
from modelzip.core.model_links import model_link
from modelzip.kernels import int8_gemv as gemv
from modelzip.kernels.int8 import ENGINE_ATTR, RELU_ATTR
from modelzip.kernels.int8_dynamic_relus import link_int8_relus, unlink
from modelzip.models import create
from modelzip.quantize.int8 import Int8Linear
from modelzip.quantize.int8_method import Int8Config

KIND = "int8:native linear_dynamic"


def _dynamic(model: nn.Module, x: torch.Tensor) -> nn.Module:
    out, _ = modelzip.compress(model, Int8Config(activations="dynamic"), sample=x,
                               deploy=False, measure=False, evaluate=False)  # fmt: skip
    return out.eval()


def _on_native(model: nn.Module, names: tuple[str, ...]) -> nn.Module:
    for name in names:
        replace_module(model, name, build_form(model.get_submodule(name), KIND))
    return model


def _lenet300() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28)
    return _dynamic(create("lenet300").eval(), x), x


def _relu_nodes(model: nn.Module) -> int:
    return sum(1 for n in model.graph.nodes if n.op == "call_module" and "relu" in str(n.target))


@pytest.mark.parametrize("native", ["here", "absent"])
def test_linked_outputs_are_the_unlinked_ones(monkeypatch, native):
    """Both ReLUs of LeNet-300 fused (fc1, fc2); the outputs equal the model with its ReLUs,
    on the kernel's clamp and, without the native kernels, on fbgemm with the ReLU after."""
    if native == "absent":
        monkeypatch.setattr(gemv, "native", lambda: None)
    model, x = _lenet300()
    _on_native(model, ("fc1", "fc2", "fc3"))
    with torch.no_grad():
        ref, ref1 = model(x), model(x[:1])  # the input's grid is the batch's: one row its own
    linked, links, why = link_int8_relus(model)
    assert (links, why) == (2, "")
    assert _relu_nodes(linked) == 0
    assert model.fc1.__dict__[RELU_ATTR] and model.fc2.__dict__[RELU_ATTR]
    assert RELU_ATTR not in model.fc3.__dict__
    with torch.no_grad():
        assert torch.equal(linked(x), ref)
        assert torch.equal(linked(x[:1]), ref1)
    eager = unlink(linked)
    assert eager is model and RELU_ATTR not in model.fc1.__dict__
    with torch.no_grad():
        assert torch.equal(eager(x), ref)


def test_only_relus_that_read_a_native_layer_alone():
    """fc1 on fbgemm (not native) keeps its ReLU; a layer whose output another node also reads
    keeps it; so does a layer called twice."""
    model, _ = _lenet300()
    _on_native(model, ("fc2",))
    _, links, why = link_int8_relus(model)
    assert (links, why) == (1, "")  # fc2's alone: fc1 runs fbgemm
    assert RELU_ATTR not in model.fc1.__dict__
    unlink(model)

    class Tap(nn.Module):
        def __init__(self, fc: nn.Module) -> None:
            super().__init__()
            self.fc, self.relu = fc, nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return self.relu(y) + y  # y read twice

    class Twice(nn.Module):
        def __init__(self, fc: nn.Module) -> None:
            super().__init__()
            self.fc = fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(torch.relu(self.fc(x))))

    square = _on_native(_dynamic(nn.Sequential(nn.Linear(8, 8)), torch.randn(4, 8)), ("0",))[0]
    for wrapper in (Tap(square), Twice(square)):
        _, links, why = link_int8_relus(wrapper)
        assert links == 0 and why.startswith("no ReLU")


def test_nothing_to_link_says_why():
    model, _ = _lenet300()  # every linear on fbgemm
    assert link_int8_relus(model) == (model, 0, "no dynamic int8 linear on the native kernel")


@pytest.mark.skipif(gemv.native() is None, reason="no native build runs on this CPU")
def test_deploy_links_saves_and_loads(fake_deploy_clock, tmp_path):
    """The native form measured faster (a fake clock) on every linear: deploy fuses the two
    ReLUs and says so; the file records the link and the loaded model makes it again, with the
    same outputs; trainable() gives back the layers with their ReLUs."""
    from modelzip.deploy import materialize, trainable

    model, x = _lenet300()
    fake_deploy_clock(
        lambda c: (
            type(c) is nn.Linear
            or (isinstance(c, Int8Linear) and c.__dict__.get(ENGINE_ATTR) != gemv.ENGINE)
        )
    )
    fast, report = materialize(model, x)
    assert isinstance(fast, fx.GraphModule) and _relu_nodes(fast) == 0
    assert report.int8_relus == "2 ReLUs run in the int8 linears before"
    assert "int8 ReLUs: 2 ReLUs" in str(report)
    with torch.no_grad():
        y = fast(x)
    loaded = modelzip.load(modelzip.save(fast, tmp_path / "f.mzip"))
    assert isinstance(loaded, fx.GraphModule) and _relu_nodes(loaded) == 0
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    back = trainable(fast)
    assert not any(m.__dict__.get(RELU_ATTR) for m in back.modules())
    assert isinstance(back.relu1, nn.ReLU)


def test_registered_as_a_model_link():
    assert model_link("int8_relus") == (link_int8_relus, unlink)
