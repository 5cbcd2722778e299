"""The deploy step every path ends with (issue #20, item 1).

``compress`` returns each compressed layer in its fastest correct executable form, measured on the
sample; the Report says what each layer became and times the result against the dense original
side by side; a saved deployed model keeps its compact form in the file and loads deployed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import modelzip
from modelzip.cli import main
from modelzip.core.compact_source import compact_source
from modelzip.core.errors import ModelError
from modelzip.core.forms import candidates
from modelzip.deploy import is_deployed, trainable
from modelzip.joint.sparse_quant import SparseQuantizeConfig
from modelzip.models import create
from modelzip.prune import MagnitudePruneConfig
from modelzip.prune.masked import MaskedLinear
from modelzip.quantize import BinaryConfig, QuantizeWeightsConfig, TernaryConfig
from modelzip.quantize.int8 import Int8Linear, int8_grid
from modelzip.serialize import read_metadata

PRUNE = MagnitudePruneConfig(sparsity=0.95)


@pytest.fixture(scope="module")
def lenet() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create("lenet300").eval(), torch.rand(32, 1, 28, 28)


def test_compress_deploys_by_default_and_reports_it(lenet) -> None:
    model, x = lenet
    trainable, _ = modelzip.compress(model, PRUNE, sample=x, deploy=False, measure=False)
    deployed, report = modelzip.compress(model, PRUNE, sample=x)
    assert [row["name"] for row in report.deployment] == ["fc1", "fc2", "fc3"]
    assert all(row["reason"] for row in report.deployment)
    eager = deployed.__dict__.get("_modelzip_eager", deployed)  # a linked model's layers
    for row in report.deployment:  # the Report names the form each layer has now
        assert type(eager.get_submodule(row["name"])).__name__ == row["after"]
    # Unless every layer chose dense alone, the per-layer choice was timed against the whole
    # model made dense, and the note says which won; runs of sparse linears linked into one
    # call are said too.
    note = report.deploy_note
    whole = note.startswith("whole model: ") and "per-layer" in note
    assert note == "" or whole or note.startswith("sparse chain: "), note
    assert not any(p.requires_grad for p in deployed.parameters())  # inference-only kernels
    with torch.no_grad():
        ref = trainable(x)
        torch.testing.assert_close(deployed(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    # Sizes are the compact ones the file keeps, not those of a dense executable form.
    assert report.after.size_bytes == modelzip.model_stats(trainable).size_bytes


def test_latency_is_timed_against_the_dense_original(lenet) -> None:
    model, x = lenet
    _, report = modelzip.compress(model, PRUNE, sample=x)
    for stats in (report.before, report.after):
        assert stats.latency_ms is not None and stats.latency_ms > 0
        low, high = stats.latency_range_ms
        assert low <= stats.latency_ms <= high
        assert stats.first_call_ms is not None  # reported apart, not among the samples
        assert stats.latency_batch == x.shape[0]
    assert report.speedup == pytest.approx(report.before.latency_ms / report.after.latency_ms)
    assert "first_call_ms" in report.to_dict()["after"]


def test_trainable_form_on_request_and_without_a_sample(lenet) -> None:
    model, x = lenet
    kept, report = modelzip.compress(model, PRUNE, sample=x, deploy=False, measure=False)
    assert isinstance(kept.fc1, MaskedLinear) and report.deployment == []
    assert "deploy=False" in report.deploy_note
    unsampled, report = modelzip.compress(model, PRUNE, measure=False)
    assert isinstance(unsampled.fc1, MaskedLinear)
    assert "no sample" in report.deploy_note
    # The caller's model is never touched, deployed or not.
    assert type(model.fc1) is torch.nn.Linear


def test_a_deployed_file_stays_compact_and_loads_deployed(lenet, tmp_path: Path) -> None:
    model, x = lenet
    trainable, _ = modelzip.compress(model, PRUNE, sample=x, deploy=False, measure=False)
    deployed, _ = modelzip.compress(model, PRUNE, sample=x, measure=False)
    compact_file = modelzip.save(trainable, tmp_path / "compact.mzip")
    deployed_file = modelzip.save(deployed, tmp_path / "deployed.mzip")
    # The compact form and the choice of form, a few bytes more than the trainable file.
    assert deployed_file.stat().st_size <= compact_file.stat().st_size + 1024
    loaded = modelzip.load(deployed_file)
    assert [type(m).__name__ for m in loaded.modules()] == [
        type(m).__name__ for m in deployed.modules()
    ]
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))
    # And saved again, it is the same file content (the compact form travels with the layer).
    again = modelzip.save(loaded, tmp_path / "again.mzip")
    assert read_metadata(again)["layers"] == read_metadata(deployed_file)["layers"]


def test_an_unknown_deployed_form_is_refused_naming_the_layer(lenet, tmp_path: Path) -> None:
    model, x = lenet
    deployed, _ = modelzip.compress(model, PRUNE, sample=x, measure=False)
    eager = deployed.__dict__.get("_modelzip_eager", deployed)  # names as the file keeps them
    name = next(n for n, m in eager.named_modules() if compact_source(m) is not None)
    compact_source(eager.get_submodule(name)).kind = "float:no such form"
    path = modelzip.save(deployed, tmp_path / "odd.mzip")
    with pytest.raises(ModelError, match=f"layer {name!r}.*no executable form"):
        modelzip.load(path)


def test_cli_compress_deploys_and_eval_times_against_dense(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- method: magnitude_prune\n  sparsity: 0.95\n")
    out = tmp_path / "small.mzip"
    args = ["compress", "lenet300", "--recipe", str(recipe), "--out", str(out), "--json"]
    assert main([*args, "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["deployment"]) == 3 and report["speedup"] > 0
    layers = read_metadata(out)["layers"]
    for row in report["deployment"]:  # a larger form is saved as the compact layer + its choice
        entry = layers[row["name"]]
        assert entry["class"].endswith("MaskedLinear")
        assert entry.get("deploy") in (None, row["form"])
        if row["after"] == "Linear":  # dense takes 20x the bytes of a 95%-pruned layer
            assert entry["deploy"] == "dense"
    assert main(["eval", str(out), "--dataset", "mnist", "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["dense_latency_ms"] > 0 and stats["latency_ms"] > 0
    assert stats["speedup"] == pytest.approx(stats["dense_latency_ms"] / stats["latency_ms"])
    kept = tmp_path / "kept.mzip"
    args = ["compress", "lenet300", "--recipe", str(recipe), "--out", str(kept), "--no-deploy"]
    assert main([*args, "--quiet", "--no-latency"]) == 0
    layers = read_metadata(kept)["layers"]
    assert all(e["class"].endswith("MaskedLinear") and "deploy" not in e for e in layers.values())
    # eval runs a file saved in its trainable form as it would be deployed, and says so.
    capsys.readouterr()
    assert main(["eval", str(kept), "--dataset", "mnist", "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    chosen = {row["name"]: row["form"] for row in stats["deployed_on_load"]}
    assert set(chosen) <= {"fc1", "fc2", "fc3"} and all(chosen.values())
    assert stats["speedup"] > 0


def test_a_deployed_model_takes_another_recipe_step(lenet) -> None:
    model, x = lenet
    pruned, _ = modelzip.compress(model, PRUNE, sample=x, measure=False)
    assert is_deployed(pruned)
    # compress turns the deployed layers back into the masked ones before the next step.
    _, report = modelzip.compress(pruned, SparseQuantizeConfig(bits=4), sample=x, measure=False)
    assert {c.before for c in report.layers} == {"MaskedLinear"}
    assert {c.after for c in report.layers} == {"SparseQuantLinear"}
    assert is_deployed(pruned), "the caller's deployed model is left as it was"
    again = trainable(pruned)
    assert not is_deployed(again) and all(p.requires_grad for p in again.parameters())
    assert isinstance(again.fc1, MaskedLinear)
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=1e-4, atol=1e-5)


def test_a_deployed_model_loads_frozen_and_deployed(lenet, tmp_path: Path) -> None:
    model, x = lenet
    deployed, _ = modelzip.compress(model, PRUNE, sample=x, measure=False)
    loaded = modelzip.load(modelzip.save(deployed, tmp_path / "m.mzip"))
    assert is_deployed(loaded)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable_form, _ = modelzip.compress(model, PRUNE, sample=x, measure=False, deploy=False)
    reloaded = modelzip.load(modelzip.save(trainable_form, tmp_path / "t.mzip"))
    assert not is_deployed(reloaded)
    assert all(p.requires_grad for p in reloaded.parameters())


@pytest.mark.parametrize(
    "config",
    [QuantizeWeightsConfig(bits=4), TernaryConfig(), BinaryConfig()],
    ids=lambda c: c.method,
)
def test_k_bit_ternary_binary_weights_reach_the_int8_kernels_exactly(config, lenet) -> None:
    model, x = lenet
    small, _ = modelzip.compress(model, config, sample=x, measure=False, deploy=False)
    layer = small.fc1
    grid = int8_grid(layer.decoded_weight())
    assert grid is not None, "k-bit codes lie on an int8 grid"
    codes, scale = grid
    # The int8 codes give back the weight the codes decode to (to the last float bit).
    torch.testing.assert_close(codes.float() * scale[:, None], layer.decoded_weight())
    # The dynamic form (the static one, int8_static_codes, is tests/quantize/test_static_codes).
    [(_, build)] = [c for c in candidates(layer, None) if "x86 linear_dynamic" in c[0]]
    fast = build()
    assert isinstance(fast, Int8Linear) and fast.activations == "dynamic"
    torch.testing.assert_close(fast.dequantized_weight(), layer.decoded_weight())


def test_a_weight_off_any_small_grid_is_not_taken_for_int8() -> None:
    w = torch.tensor([[1.0, 0.3, -0.7], [0.5, 0.25, 2.0]])  # 0.3/0.7 share no step of ≤127
    assert int8_grid(w) is None
    assert int8_grid(torch.tensor([[0.5, -0.25, 0.0]]))[0].tolist() == [[2, -1, 0]]


@pytest.mark.parametrize(("argv0", "expected"), [("modelzip", "PASSIVE"), ("python", "None")])
def test_the_command_sets_passive_openmp_waits_before_torch_loads(argv0, expected) -> None:
    code = (
        f"import sys; sys.argv = [{argv0!r}]; import modelzip, os; "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_a_model_off_the_cpu_keeps_its_compressed_forms(lenet) -> None:
    """The kernels run on the CPU alone: a model elsewhere (here the meta device, standing in for
    a GPU) is left in its compressed forms, and the report says why."""
    from modelzip.deploy import materialize

    model, x = lenet
    small, _ = modelzip.compress(model, PRUNE, sample=x, measure=False, deploy=False)
    elsewhere = small.to("meta")
    out, report = materialize(elsewhere, x.to("meta"))
    assert isinstance(out.fc1, MaskedLinear) and not is_deployed(out)
    assert report.layers == [] and "the model is on meta" in report.note
    assert "the model is on meta" in str(report)


def _static_int8_net() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small conv net in static int8 (its trainable form: StaticInt8Conv2d/Linear layers)."""
    from modelzip.quantize.int8_method import Int8Config

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 10),
    ).eval()  # fmt: skip
    x = torch.rand(8, 1, 8, 8)
    small, _ = modelzip.compress(net, Int8Config(activations="static"), sample=x,
                                 deploy=False, measure=False, evaluate=False)  # fmt: skip
    return small, x


def test_a_chained_channels_last_model_loads_in_its_layout(tmp_path: Path) -> None:
    """A static int8 model deployed chained (a GraphModule over its eager model) in channels-last
    is saved from its eager model, and loads in channels-last, not NCHW (which ran a LeNet-5
    1.2x slower than the model compress had measured)."""
    from modelzip.core.compact_source import LAYOUT_ATTR
    from modelzip.deploy import materialize
    from modelzip.models import create
    from modelzip.quantize.int8_method import Int8Config

    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    small, _ = modelzip.compress(create("lenet5").eval(), Int8Config(activations="static"),
                                 sample=x, deploy=False, measure=False, evaluate=False)  # fmt: skip
    fast, report = materialize(small, x, choose="compressed", layout="channels_last")
    assert report.int8_links >= 2 and fast.__dict__.get(LAYOUT_ATTR) == "channels_last"
    loaded = modelzip.load(modelzip.save(fast, tmp_path / "chained.mzip"))
    assert loaded.__dict__.get(LAYOUT_ATTR) == "channels_last"
    wide = [t for t in (*loaded.parameters(), *loaded.buffers()) if t.dim() == 4 and t.shape[1] > 1]
    assert wide and all(t.is_contiguous(memory_format=torch.channels_last) for t in wide)
    with torch.no_grad():
        assert torch.equal(loaded(x), fast(x))


def test_static_int8_slower_than_float_is_not_kept(fake_deploy_clock) -> None:
    """A static int8 layer offers its dequantized float layer (same weights, int8 tolerance);
    where the int8 engine is measured slower, per layer and for the whole model against the
    uint8 chain, the float form is kept, and the note says so in one line."""
    from modelzip.deploy import TOLERANCE, materialize
    from modelzip.kernels._native import native
    from modelzip.kernels.int8 import onednn_available
    from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear

    small, x = _static_int8_net()
    onednn = ["int8:static onednn"] if onednn_available() else []
    first = ["int8:static native"] if native() is not None else []  # 1 channel, 3×3: K = 9
    assert [k for k, _ in candidates(small[0], x)] == [*onednn, *first, "int8:dense"]
    from modelzip.kernels.int8_static_gemm import available

    native_linear = ["int8:static native"] if available() else []  # the GEMM needs VNNI
    assert [k for k, _ in candidates(small[-1], x)] == [*native_linear, "int8:dense"]
    fake_deploy_clock((StaticInt8Conv2d, StaticInt8Linear))
    fast, report = materialize(small, x)
    assert not any(isinstance(m, (StaticInt8Conv2d, StaticInt8Linear)) for m in fast.modules())
    assert {r["form"] for r in report.rows()} == {"int8:dense"}
    assert report.model_choice == min(report.model_ms, key=report.model_ms.__getitem__)
    assert report.model_ms["static int8"] > report.model_ms[report.model_choice]
    assert "static int8 measured" in report.note and "slower here: not kept" in report.note
    with torch.no_grad():
        ref = small(x)
        assert float((fast(x) - ref).abs().max()) <= TOLERANCE["int8"] * float(ref.abs().max())


def test_static_int8_faster_than_float_is_kept_chained(fake_deploy_clock) -> None:
    """Measured the other way round, the static int8 layers stay, chained (uint8 between them),
    after the whole-model dense candidate was timed against them."""
    from modelzip.deploy import materialize
    from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear

    small, x = _static_int8_net()
    fake_deploy_clock((torch.nn.Conv2d, torch.nn.Linear))
    fast, report = materialize(small, x)
    layers = [fast.get_submodule(r["name"]) for r in report.rows()]
    assert all(isinstance(m, (StaticInt8Conv2d, StaticInt8Linear)) for m in layers)
    assert "dense" in report.model_ms and report.model_choice != "dense"
    assert report.int8_links >= 2 and "not kept" not in report.note


def test_static_int8_layers_stay_without_a_sample_or_when_asked() -> None:
    """Without a sample, or with ``choose="compressed"``, a static int8 layer is its own
    compressed kernel: kept (not its first float form taken unmeasured)."""
    from modelzip.deploy import materialize
    from modelzip.quantize.static_int8 import StaticInt8Conv2d, StaticInt8Linear

    small, x = _static_int8_net()
    for sample, choose in ((None, "measured"), (x, "compressed")):
        fast, report = materialize(small, sample, choose=choose)  # type: ignore[arg-type]
        layers = [fast.get_submodule(r["name"]) for r in report.rows()]
        assert len(layers) == 3
        assert all(isinstance(m, (StaticInt8Conv2d, StaticInt8Linear)) for m in layers)


@pytest.mark.skipif(
    "onednn" not in torch.backends.quantized.supported_engines, reason="no oneDNN quantized engine"
)
def test_static_int8_conv_on_onednn_matches_and_loads_as_chosen(
    fake_deploy_clock, tmp_path
) -> None:
    """The ``int8:static onednn`` form prepacks the same codes for oneDNN: the same integer
    arithmetic (outputs within one output code of the default engine's), the op runs oneDNN's
    kernel whatever the global engine, and a file saved with it loads with it."""
    from modelzip.deploy import materialize
    from modelzip.kernels.int8 import ENGINE_ATTR
    from modelzip.models import create
    from modelzip.quantize.int8_method import Int8Config
    from modelzip.quantize.static_int8 import StaticInt8Conv2d

    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    small, _ = modelzip.compress(create("lenet5").eval(), Int8Config(activations="static"),
                                 sample=x, deploy=False, measure=False, evaluate=False)  # fmt: skip
    conv = small.conv1
    (kind, build), *_ = candidates(conv, x)
    assert kind == "int8:static onednn"
    onednn = build()
    assert isinstance(onednn, StaticInt8Conv2d) and onednn.__dict__[ENGINE_ATTR] == "onednn"
    with torch.no_grad():
        ref, got = conv(x), onednn(x)
    step = float(conv.out_scale)  # one code of the output grid
    assert float((got - ref).abs().max()) <= step * 1.001
    assert torch.backends.quantized.engine != "onednn"  # prepacking left the setting alone
    # Measured faster (a fake clock: the default engine's convs and float layers slow): chosen,
    # and rebuilt so on load.
    fake_deploy_clock(
        lambda c: (
            type(c) in (torch.nn.Conv2d, torch.nn.Linear)
            or (isinstance(c, StaticInt8Conv2d) and ENGINE_ATTR not in c.__dict__)
        )
    )
    fast, report = materialize(small, x)
    forms = {r["name"]: r["form"] for r in report.rows()}
    path = modelzip.save(fast, tmp_path / "f.mzip")
    loaded = modelzip.load(path)
    assert forms["conv1"] == forms["conv2"] == "int8:static onednn"
    for name, form in forms.items():
        layer = loaded.get_submodule(name)
        assert (layer.__dict__.get(ENGINE_ATTR) == "onednn") == (form == "int8:static onednn")
    with torch.no_grad():
        assert torch.equal(loaded(x), fast(x))
