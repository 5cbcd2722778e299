"""Dynamic int8 linears on the native kernel linked (:mod:`modelzip.kernels.int8_dynamic_runs`):
ReLUs run in their output and runs of them as one call, with the same outputs as the unlinked
model, on the kernel and where it does not run (fbgemm then, the ReLU after it) or not for this
input (more rows than the limit); only ReLUs and layers that read nothing but such a layer,
called once; chosen by deploy, saved, loaded and undone; the run's arguments follow changed
weights."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import modelzip
from modelzip.core.compact_source import INT8_RUNS_ATTR
from modelzip.core.context import replace_module
from modelzip.core.forms import build_form
from modelzip.core.model_links import model_link
from modelzip.kernels import int8_gemv as gemv
from modelzip.kernels.int8 import ENGINE_ATTR, RELU_ATTR
from modelzip.kernels.int8_dynamic_runs import Int8Run, link_int8_runs, unlink
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


def _runs(model: nn.Module) -> list[Int8Run]:
    return [m for m in model.modules() if isinstance(m, Int8Run)]


@pytest.mark.parametrize("native", ["here", "absent", "past the row limit"])
def test_linked_outputs_are_the_unlinked_ones(monkeypatch, native):
    """Both ReLUs of LeNet-300 fused (fc1, fc2) and its three linears one run; the outputs equal
    the model with its ReLUs: on the kernel's chain, and layer by layer where the native kernels
    are absent (fbgemm, the ReLU after it) or the input has more rows than they take."""
    if native == "absent":
        monkeypatch.setattr(gemv, "native", lambda: None)
    if native == "past the row limit":
        monkeypatch.setattr(gemv, "row_limit", lambda: 2)
    model, x = _lenet300()
    _on_native(model, ("fc1", "fc2", "fc3"))
    with torch.no_grad():
        ref, ref1 = model(x), model(x[:1])  # the input's grid is the batch's: one row its own
    linked, links, why = link_int8_runs(model)
    assert (links, why) == (2 + 3, "")
    assert (
        linked.__dict__[INT8_RUNS_ATTR]
        == "2 ReLUs run in the layers before; 3 layers run as 1 call"
    )
    assert _relu_nodes(linked) == 0
    [run] = _runs(linked)
    assert list(run.layers) == [model.fc1, model.fc2, model.fc3]  # shared, not copied
    assert run.relu == (True, True, False)  # the run's, not notes on the layers
    assert not any(RELU_ATTR in m.__dict__ for m in run.layers)
    assert linked.get_submodule("fc2") is model.fc2  # the model's names still resolve
    assert [n for n, _ in linked.named_children()][:5] == [n for n, _ in model.named_children()][:5]
    with torch.no_grad():
        assert torch.equal(linked(x), ref)
        assert torch.equal(linked(x[:1]), ref1)
        seen = []  # a hook on a layer: the run calls the layers one by one, the hook fires
        handle = model.fc2.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
        assert torch.equal(linked(x), ref) and seen == [torch.Size([5, 300])]
        handle.remove()
    eager = unlink(linked)
    assert eager is model and isinstance(eager.relu1, nn.ReLU)
    with torch.no_grad():
        assert torch.equal(eager(x), ref)


def test_a_layer_replaced_later_keeps_its_relu():
    """A later deploy may put a run's layer (every alias of it) on another engine: the run then
    goes layer by layer and still applies the ReLU fused after it."""
    from modelzip.kernels.int8_gemv import ENGINE as NATIVE_ENGINE

    model, x = _lenet300()
    _on_native(model, ("fc1", "fc2", "fc3"))
    with torch.no_grad():
        ref = model(x)
    linked, _, _ = link_int8_runs(model)
    fbgemm = build_form(model.fc1, "int8:x86 linear_dynamic")
    fbgemm.codes = fbgemm.codes.clone()  # other tensors than the run's arguments were made from
    assert fbgemm.__dict__.get(ENGINE_ATTR) != NATIVE_ENGINE
    replace_module(linked, "fc1", fbgemm)  # what deploy's assemble does: every alias
    [run] = _runs(linked)
    assert run.layers[0] is fbgemm
    with torch.no_grad():
        got = linked(x)
    assert float((got - ref).abs().max()) <= 0.05 * float(ref.abs().max())  # fbgemm's 7 bits
    assert run._args is None or run._args[2] is None  # never on the kernel with fbgemm's layer


@pytest.mark.skipif(gemv.native() is None, reason="no native build runs on this CPU")
def test_a_run_follows_changed_weights():
    """The run keeps its kernel arguments while the layers' tensors are unchanged and makes
    them again when one changes (here fc2's codes, in place)."""
    model, x = _lenet300()
    _on_native(model, ("fc1", "fc2", "fc3"))
    linked, _, _ = link_int8_runs(model)
    [run] = _runs(linked)
    h = x[:2].flatten(1)  # within every build's row limit
    with torch.no_grad():
        run(h)
        first = run._args
        run(h)
        assert run._args is first
        model.fc2.codes.neg_()
        expected = h
        for layer, relu in zip(run.layers, run.relu, strict=True):  # rebuilt for the new codes
            expected = layer(expected)
            expected = expected.relu() if relu else expected
        assert torch.equal(run(h), expected)
        assert run._args is not first


def test_only_relus_that_read_a_native_layer_alone():
    """fc1 on fbgemm (not native) keeps its ReLU; fc2's ReLU runs in it (a run of one layer);
    a layer whose output another node also reads keeps it; so does a layer called twice."""
    model, x = _lenet300()
    _on_native(model, ("fc2",))
    with torch.no_grad():
        ref = model(x)
    linked, links, why = link_int8_runs(model)
    assert (links, why) == (1 + 1, "")  # fc2's ReLU, fc2 as a run of one
    assert (
        linked.__dict__[INT8_RUNS_ATTR] == "1 ReLU run in the layers before; 1 layer run as 1 call"
    )
    [run] = _runs(linked)
    assert list(run.layers) == [model.fc2] and run.relu == (True,)
    assert _relu_nodes(linked) == 1  # fc1's
    with torch.no_grad():
        assert torch.equal(linked(x), ref)
    unlink(linked)

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
        _, links, why = link_int8_runs(wrapper)
        assert links == 0 and why.startswith("no ReLU")


def test_nothing_to_link_says_why():
    model, _ = _lenet300()  # every linear on fbgemm
    assert link_int8_runs(model) == (model, 0, "no dynamic int8 linear on the native kernel")


@pytest.mark.skipif(gemv.native() is None, reason="no native build runs on this CPU")
def test_deploy_links_saves_and_loads(fake_deploy_clock, tmp_path):
    """The native form measured faster (a fake clock) on every linear: deploy fuses the two
    ReLUs, runs the three layers as one call and says so; the file records the link and the
    loaded model makes it again, with the same outputs; trainable() gives back the layers with
    their ReLUs."""
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
    assert report.int8_runs == "2 ReLUs run in the layers before; 3 layers run as 1 call"
    assert "int8 linears: 2 ReLUs" in str(report)
    assert len(_runs(fast)) == 1
    with torch.no_grad():
        y = fast(x)
    loaded = modelzip.load(modelzip.save(fast, tmp_path / "f.mzip"))
    assert isinstance(loaded, fx.GraphModule) and _relu_nodes(loaded) == 0 and _runs(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    back = trainable(fast)
    assert isinstance(back.relu1, nn.ReLU) and not _runs(back)


def test_registered_as_a_model_link():
    assert model_link("int8_runs") == (link_int8_runs, unlink)
