"""A deployed int8 model run whole by onnxruntime (modelzip.export.ort_link): chosen only when
measured faster, equal to the PyTorch deployment within the int8 tolerance, saved as a record and
linked again on load, and every input the graph does not take runs in PyTorch."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import modelzip
from modelzip.core.compact_source import ORT_ATTR
from modelzip.core.counting import collect_workloads
from modelzip.core.errors import ModelError
from modelzip.core.integrity import DIGEST_KEY, content_digest
from modelzip.core.timing import Timing
from modelzip.deploy import is_deployed, trainable
from modelzip.deploy import timing as deploy_timing
from modelzip.deploy.report import TOLERANCE
from modelzip.export.ort_link import ENV_SWITCH, OrtModel, input_spec
from modelzip.kernels.int8_ort import ort_available
from modelzip.models import create
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.quantize.int8_method import Int8Config

pytestmark = pytest.mark.skipif(not ort_available(), reason="onnx/onnxruntime not installed")


@pytest.fixture
def ort_clock(fake_deploy_clock, monkeypatch):
    """Deploy's clock replaced; ``install(ort_faster)`` makes the whole model on onnxruntime
    cost 1 ms and every other whole-model candidate 2 ms (or the reverse)."""
    monkeypatch.setenv(ENV_SWITCH, "1")

    def install(ort_faster: bool = True) -> None:
        fake_deploy_clock(())

        def cost(m: torch.nn.Module) -> float:
            return (1.0 if isinstance(m, OrtModel) == ort_faster else 2.0) / 1e3

        monkeypatch.setattr(
            deploy_timing, "time_interleaved", lambda ms, x, **kw: [Timing((cost(m),)) for m in ms]
        )

    return install


def _sample() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(32, 1, 28, 28)


def _static(model: torch.nn.Module, x: torch.Tensor, **kw):
    return modelzip.compress(
        model, Int8Config(activations="static"), sample=x, measure=False, evaluate=False, **kw
    )


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOLERANCE["int8"]) -> bool:
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


def test_kept_when_faster_and_linked_again_on_load(ort_clock, tmp_path) -> None:
    ort_clock(ort_faster=True)
    x = _sample()
    dense = create("lenet300").eval()
    model, report = _static(dense, x)
    assert isinstance(model, OrtModel) and is_deployed(model)
    assert "onnxruntime runs the whole model" in report.deploy_note
    torch_model = model.torch_model
    with torch.no_grad():
        got, in_torch, want = model(x), torch_model(x), dense(x)
    assert _close(got, in_torch) and _close(got, want)
    # Its parameters and layers are the PyTorch deployment's (counted once, by their names).
    assert [n for n, _ in model.named_modules()] == [n for n, _ in torch_model.named_modules()]
    assert model.state_dict().keys() == torch_model.state_dict().keys()

    path = modelzip.save(model, tmp_path / "m.mzip")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["modelzip"])
    assert meta["onnxruntime"] == {"input_shape": [1, 28, 28]}
    loaded = modelzip.load(path)
    assert isinstance(loaded, OrtModel) and is_deployed(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
        assert _close(loaded(x[:3]), in_torch[:3])

    # Back to the compressed layers for more recipe steps; the link is not carried there.
    back = trainable(loaded)
    assert not isinstance(back, OrtModel) and ORT_ATTR not in back.__dict__
    assert type(back.fc1).__name__ == "StaticInt8Linear"


def test_other_inputs_run_in_pytorch(ort_clock) -> None:
    ort_clock(ort_faster=True)
    x = _sample()
    model, _ = _static(create("lenet300").eval(), x)
    assert isinstance(model, OrtModel)
    calls = []
    model.torch_model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(x)
        assert calls == []  # the session ran it
        with pytest.raises(RuntimeError):  # another shape: PyTorch's error, not the session's
            model(x[:, :, :14])
    assert len(calls) == 1
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(x.double())  # another dtype: PyTorch's
    assert len(calls) == 2
    # Forward hooks on a layer (counting MACs) need the layers to run.
    workloads = collect_workloads(model, x)
    assert (
        sum(w.macs for w in workloads)
        == sum(w.macs for w in collect_workloads(model.torch_model, x))
        > 0
    )
    model.train()
    with torch.no_grad():
        model(x)
    assert len(calls) >= 4 and model.torch_model.training
    model.eval()


def test_copy_and_pickle_carry_the_graph_not_the_session(ort_clock) -> None:
    ort_clock(ort_faster=True)
    x = _sample()
    model, _ = _static(create("lenet300").eval(), x)
    with torch.no_grad():
        want = model(x)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(twin, OrtModel) and twin._session is None
        with torch.no_grad():
            assert torch.equal(twin(x), want)
        assert twin.fc1 is not model.fc1


def test_not_kept_when_slower_nor_for_float_models(ort_clock, tmp_path) -> None:
    ort_clock(ort_faster=False)
    x = _sample()
    model, report = _static(create("lenet300").eval(), x)
    assert not isinstance(model, OrtModel)
    assert "measured slower than PyTorch" in report.deploy_note
    eager = model.__dict__.get("_modelzip_eager", model)
    assert ORT_ATTR not in eager.__dict__
    path = modelzip.save(model, tmp_path / "m.mzip")
    with safe_open(str(path), "pt") as f:
        assert "onnxruntime" not in json.loads(f.metadata()["modelzip"])

    # No int8 activations: onnxruntime would only be another float runtime, not tried.
    ort_clock(ort_faster=True)
    pruned, report = modelzip.compress(
        create("lenet300").eval(), MagnitudePruneConfig(sparsity=0.5), sample=x, measure=False
    )
    assert not isinstance(pruned, OrtModel) and "onnxruntime" not in report.deploy_note


def test_switched_off_and_loaded_where_it_cannot_run(ort_clock, monkeypatch, tmp_path) -> None:
    ort_clock(ort_faster=True)
    x = _sample()
    monkeypatch.setenv(ENV_SWITCH, "0")
    model, report = _static(create("lenet300").eval(), x)
    assert not isinstance(model, OrtModel)
    assert f"{ENV_SWITCH}=0" in report.deploy_note

    monkeypatch.setenv(ENV_SWITCH, "1")
    linked, _ = _static(create("lenet300").eval(), x)
    path = modelzip.save(linked, tmp_path / "m.mzip")
    monkeypatch.setenv(ENV_SWITCH, "0")  # as on a machine without onnxruntime
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = modelzip.load(path)
    assert any("runs in PyTorch here" in str(w.message) for w in caught)
    assert not isinstance(loaded, OrtModel) and is_deployed(loaded)
    with torch.no_grad():
        assert _close(loaded(x), linked(x))


def test_inplace_deploys_the_callers_model(ort_clock) -> None:
    ort_clock(ort_faster=True)
    x = _sample()
    mine = create("lenet300").eval()
    model, _ = _static(mine, x, inplace=True)
    assert isinstance(model, OrtModel) and model.__dict__["_modelzip_eager"] is mine
    assert type(mine.fc1).__name__ == "StaticInt8Linear" and model.fc1 is mine.fc1


def _rewrite_meta(path, change) -> None:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["modelzip"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    meta.pop(DIGEST_KEY)
    change(meta)
    meta[DIGEST_KEY] = content_digest(tensors, meta)
    save_file(tensors, str(path), metadata={"modelzip": json.dumps(meta)})


@pytest.mark.parametrize(
    "record", [{"input_shape": [-1, 28]}, {"input_shape": []}, {"input_shape": [True]}, [1, 28]]
)
def test_a_bad_record_in_a_file_is_refused_with_the_path(ort_clock, tmp_path, record) -> None:
    ort_clock(ort_faster=True)
    model, _ = _static(create("lenet300").eval(), _sample())
    path = modelzip.save(model, tmp_path / "m.mzip")
    _rewrite_meta(path, lambda meta: meta.__setitem__("onnxruntime", record))
    with pytest.raises(ModelError, match=r"m\.mzip.*onnxruntime link .* is invalid"):
        modelzip.load(path)
    with pytest.raises(ModelError, match="input_shape"):
        input_spec(record)


def test_a_session_this_onnxruntime_cannot_build_leaves_the_model_in_pytorch(
    ort_clock, monkeypatch, tmp_path
) -> None:
    ort_clock(ort_faster=True)
    x = _sample()
    linked, _ = _static(create("lenet300").eval(), x)
    path = modelzip.save(linked, tmp_path / "m.mzip")

    def refuse(self, threads):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED")

    monkeypatch.setattr(OrtModel, "_build", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = modelzip.load(path)
    assert any("no session (RuntimeError" in str(w.message) for w in caught)
    assert not isinstance(loaded, OrtModel)
    model, report = _static(create("lenet300").eval(), x)
    assert not isinstance(model, OrtModel) and "no session" in report.deploy_note


def test_the_command_line_compresses_into_it_and_eval_runs_it(ort_clock, capsys, tmp_path):
    """``modelzip compress ... --out F`` then ``modelzip eval F --json``: the file records the
    link, and eval's model answers through the onnxruntime session."""
    from modelzip.cli import main

    ort_clock(ort_faster=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- {method: int8, activations: static}\n")
    out = tmp_path / "q.mzip"
    argv = ["compress", "lenet300", "--recipe", str(recipe), "--dataset", "digits",
            "--out", str(out), "--json", "--no-latency"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert "onnxruntime runs the whole model" in report["deploy_note"]
    with safe_open(str(out), "pt") as f:
        assert "onnxruntime" in json.loads(f.metadata()["modelzip"])

    runs = []
    graph_forward = OrtModel.forward

    def counted(self, *args, **kwargs):
        runs.append(kwargs == {} and len(args) == 1 and self.runs_graph(args[0]))
        return graph_forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OrtModel, "forward", counted)
        assert main(["eval", str(out), "--dataset", "digits", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["accuracy"] is not None and stats["latency_ms"] is not None
    assert any(runs)  # the session ran eval's batches


def test_not_kept_when_faster_only_within_the_margin(ort_clock, monkeypatch) -> None:
    """1% faster is within the measurement's noise: the whole model stays in PyTorch, and the
    note says why; past the margin it moves (the tests above, 2× apart)."""
    from modelzip.deploy import runtime_choice

    ort_clock(ort_faster=True)

    def cost(m: torch.nn.Module) -> float:
        return (1.98 if isinstance(m, OrtModel) else 2.0) / 1e3

    monkeypatch.setattr(
        deploy_timing, "time_interleaved", lambda ms, x, **kw: [Timing((cost(m),)) for m in ms]
    )
    model, report = _static(create("lenet300").eval(), _sample())
    assert not isinstance(model, OrtModel)
    assert f"within the {runtime_choice.MARGIN:.0%} margin" in report.deploy_note
