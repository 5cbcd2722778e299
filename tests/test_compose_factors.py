"""Composition reaches the factors of every decomposed layer: weight quantization after a
decomposition codes the TT cores, HT and Tucker factors a tensor-network layer holds
(:class:`~modelzip.quantize.factors.FactorQuantized`), and the factor convs of Tucker-2 and CP.

For each decomposition (linear and conv where each has one) followed by ``quantize_weights`` at
4 and 8 bits and by ``int8``: the Report records the second step on the first step's layers (or
their parts), the stored size drops, the output stays near the decomposed model's (8 bits) or
finite (4 bits), and save -> load is bit-exact.
"""

from __future__ import annotations

import math

import pytest
import torch

import modelzip
from modelzip.core.counting import module_bytes
from modelzip.core.errors import ConfigError, ModelError
from modelzip.export.convert import exportable
from modelzip.export.onnx import run_onnx, to_onnx_bytes
from modelzip.models import create
from modelzip.quantize.factors import CodedFactor, FactorQuantized
from modelzip.recipe import Recipe
from modelzip.serialize import _top_compressed

SAMPLE = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
LINEAR = {"types": ["Linear"]}
CONV = {"types": ["Conv2d"]}

#: The first step, and the class its layers become (a class holding its factors as tensors is
#: wrapped in FactorQuantized by the second step; one holding factor convs keeps its class).
FIRSTS = {
    "tt_linear": ({"method": "tt", "rank": 8, "select": LINEAR}, "TTLinear"),
    "tt_conv": ({"method": "tt", "rank": 8, "select": CONV}, "TTConv2d"),
    "ht_linear": ({"method": "ht", "rank": 8}, "HTLinear"),
    "tucker_linear": ({"method": "tucker_tensorized", "rank": 8}, "TuckerLinear"),
    "tucker2_conv": ({"method": "tucker2", "rank_fraction": 0.75}, "Tucker2Conv2d"),
    "cp_conv": ({"method": "cp", "rank_fraction": 0.5, "n_iter_max": 25}, "CPConv2d"),
}
SECONDS = {
    "quantize_weights4": {"method": "quantize_weights", "bits": 4},
    "quantize_weights8": {"method": "quantize_weights", "bits": 8},
    "int8": {"method": "int8"},
}
#: Relative output error the second step may add to the decomposed model's output (as in
#: tests/test_compose_steps.py); 4-bit codes are checked for finiteness only.
TOLERANCE = {"quantize_weights8": 0.05, "int8": 0.05}
#: Wider for CP: four factor convs rounded one after the other (two of them depthwise, with
#: five weights per channel), measured 4.4% with int8 on float activations and 5.1% on dynamic.
CP_TOLERANCE = 0.1


def compressed(recipe: list[dict], model: torch.nn.Module, deploy: bool = False):
    return modelzip.compress(
        model, Recipe.from_list(recipe), sample=SAMPLE, deploy=deploy, measure=False
    )


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("lenet5").eval()


@pytest.fixture(scope="module")
def decomposed(model):
    cache: dict[str, tuple] = {}

    def get(first: str):
        if first not in cache:
            cache[first] = compressed([FIRSTS[first][0]], model)
        return cache[first]

    return get


def _assert_loads_bit_exact(small: torch.nn.Module, y: torch.Tensor, tmp_path) -> None:
    path = modelzip.save(small, tmp_path / "m.mzip")
    loaded = modelzip.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(SAMPLE), y, rtol=0, atol=0)
    again, ours = _top_compressed(loaded), _top_compressed(small)
    assert set(again) == set(ours)
    for name, layer in ours.items():
        stored = again[name].packed_state()
        for key, t in layer.packed_state().items():
            assert torch.equal(stored[key], t), f"{name}.{key}"


@pytest.mark.parametrize("second", list(SECONDS))
@pytest.mark.parametrize("first", list(FIRSTS))
def test_quantization_after_a_decomposition_codes_its_factors(
    first, second, model, decomposed, tmp_path
):
    step, cls = FIRSTS[first]
    alone, alone_report = decomposed(first)
    small, report = compressed([step, SECONDS[second]], model)
    method = SECONDS[second]["method"]
    firsts = {c.name for c in alone_report.layers}
    assert firsts and all(c.after == cls for c in alone_report.layers)
    seconds = {c.name for c in report.layers if c.method == method}
    # Every decomposed layer is quantized, whole (its factors) or in its parts, none skipped.
    for name in firsts:
        assert name in seconds or any(s.startswith(name + ".") for s in seconds), name
        layer = small.get_submodule(name)
        if isinstance(layer, FactorQuantized):
            assert type(layer.inner).__name__ == cls
            assert layer.weight_bits == SECONDS[second].get("bits", 8)
        else:
            assert type(layer).__name__ == cls
    skipped = {s.name for s in report.skipped if s.method == method}
    assert not any(s == f or s.startswith(f + ".") for s in skipped for f in firsts), skipped
    # The Report records the bytes of each change (a coded layer shrinks; a one-weight factor
    # conv may grow by its levels), and the model's size drops by their sum.
    changes = [c for c in report.layers if c.method == method]
    for change in changes:
        if change.after == "FactorQuantized":
            assert change.before == cls and change.bytes_after < change.bytes_before / 2, change
    assert sum(c.bytes_after for c in changes) < sum(c.bytes_before for c in changes)
    assert report.after.size_bytes == module_bytes(small)
    assert report.after.size_bytes < module_bytes(alone)
    with torch.no_grad():
        y_alone, y = alone(SAMPLE), small(SAMPLE)
    assert torch.isfinite(y).all()
    if second in TOLERANCE:
        error = float((y - y_alone).norm() / y_alone.norm())
        tolerance = CP_TOLERANCE if first == "cp_conv" else TOLERANCE[second]
        assert error < tolerance, (first, second, error)
    _assert_loads_bit_exact(small, y, tmp_path)


def test_tt_then_4_bit_codes_on_lenet300(tmp_path):
    torch.manual_seed(0)
    model = create("lenet300").eval()
    tt, tt_report = compressed([{"method": "tt"}], model)
    small, report = compressed([{"method": "tt"}, {"method": "quantize_weights", "bits": 4}], model)
    changes = {c.name: c for c in report.layers if c.method == "quantize_weights"}
    assert set(changes) == {"fc1", "fc2", "fc3"}
    for name, change in changes.items():
        layer = small.get_submodule(name)
        assert (change.before, change.after) == ("TTLinear", "FactorQuantized")
        assert change.bytes_before == tt.get_submodule(name).storage_bytes()
        assert change.bytes_after == layer.storage_bytes()
        # 4-bit codes: half a byte per factor entry (an eighth of float32), plus the levels.
        factors = [p for p in layer.inner.parameters() if p.dim() >= 2]
        assert len(factors) == len(layer.coded)
        for piece, factor in zip(layer.coded, factors, strict=True):
            assert piece.packed.numel() == math.ceil(factor.numel() / 2)
    assert report.after.size_bytes < tt_report.after.size_bytes / 3
    path = modelzip.save(small, tmp_path / "m.mzip")
    assert path.stat().st_size < (tt_report.after.size_bytes / 2)
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(SAMPLE), small(SAMPLE), rtol=0, atol=0)


@pytest.mark.parametrize("second", ["quantize_weights4", "int8"])
def test_tt_embedding_cores_are_coded(second, tmp_path):
    """A TT embedding's cores take a later weight quantizer as the other TT layers' do; the
    deployed model looks up a decoded table, the file keeps the codes, export says why not."""
    from modelzip.export.onnx import to_onnx_bytes

    torch.manual_seed(0)
    model = create("char_lstm").eval()
    ids = torch.randint(0, model.embedding.num_embeddings, (4, 16))
    embedding = {"types": ["Embedding"]}
    first = {"method": "tt", "rank": 8, "select": embedding}
    kw = {"sample": ids, "measure": False, "evaluate": False}
    tt, _ = modelzip.compress(model, Recipe.from_list([first]), deploy=False, **kw)
    recipe = Recipe.from_list([first, {**SECONDS[second], "select": embedding}])
    small, report = modelzip.compress(model, recipe, deploy=False, **kw)
    (change,) = [c for c in report.layers if c.method == SECONDS[second]["method"]]
    assert (change.before, change.after) == ("TTEmbedding", "FactorQuantized")
    assert change.bytes_after < change.bytes_before / (6 if second == "quantize_weights4" else 3)
    with torch.no_grad():
        ref, got = tt(ids), small(ids)
    assert float((got - ref).abs().max()) <= 0.1 * float(ref.abs().max())
    deployed, _ = modelzip.compress(model, recipe, **kw)
    loaded = modelzip.load(modelzip.save(deployed, tmp_path / "m.mzip"))
    with torch.no_grad():
        torch.testing.assert_close(deployed(ids), got, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded(ids), deployed(ids), rtol=0, atol=0)
    with pytest.raises(ModelError, match="TTEmbedding cannot be exported"):
        to_onnx_bytes(small, ids)


@pytest.mark.parametrize("first", ["rnn_tt", "rnn_ht", "rnn_lowrank"])
def test_decomposed_lstm_cells_are_coded_or_skipped_with_the_reason(first, tmp_path):
    """The TT/HT matrices of a decomposed LSTM take a later 4-bit quantizer (the file shrinks,
    loads bit-exact); a low-rank LSTM, whose factors are layers stored under their own names,
    is skipped with the reason (coding it kept the float factors beside the codes)."""
    torch.manual_seed(0)
    model = create("char_lstm").eval()
    ids = torch.randint(0, model.embedding.num_embeddings, (4, 16))
    lstm = {"types": ["LSTM"]}
    steps = [
        {"method": first, "select": lstm},
        {"method": "quantize_weights", "bits": 4, "select": lstm},
    ]
    kw = {"sample": ids, "measure": False, "evaluate": False}
    decomposed, _ = modelzip.compress(model, Recipe.from_list(steps[:1]), deploy=False, **kw)
    small, report = modelzip.compress(model, Recipe.from_list(steps), deploy=False, **kw)
    changes = [c for c in report.layers if c.method == "quantize_weights"]
    if first == "rnn_lowrank":
        assert changes == [] and type(small.lstm).__name__ == "DecomposedRNN"
        (skip,) = [s for s in report.skipped if s.method == "quantize_weights" and s.name == "lstm"]
        assert "LowRankLinear" in skip.reason and "own packed form" in skip.reason
        return
    (change,) = changes
    assert (change.before, change.after) == ("DecomposedRNN", "FactorQuantized")
    assert change.bytes_after < change.bytes_before / 1.9
    assert module_bytes(small) < module_bytes(decomposed)
    with torch.no_grad():
        ref, got = decomposed(ids), small(ids)
    assert float((got - ref).abs().max()) <= 0.05 * float(ref.abs().max())
    path = modelzip.save(small, tmp_path / "m.mzip")
    with torch.no_grad():
        torch.testing.assert_close(modelzip.load(path)(ids), got, rtol=0, atol=0)


def test_decoded_once_and_again_only_when_the_codes_change(model, monkeypatch):
    small, _ = compressed([FIRSTS["tt_linear"][0], SECONDS["quantize_weights8"]], model)
    layer = small.fc1
    calls = []
    decode = CodedFactor.decode_weight
    monkeypatch.setattr(CodedFactor, "decode_weight", lambda self: calls.append(1) or decode(self))
    x = torch.rand(3, layer.inner.in_features)
    with torch.no_grad():
        y = layer(x)
        layer(x)
        assert calls == []  # decoded when built: no decoding per call
        # The same contraction as the wrapped layer's, on the decoded factors.
        torch.testing.assert_close(layer.decoded_layer()(x), y, rtol=0, atol=0)
        torch.testing.assert_close(layer.to_dense()(x), y, rtol=1e-4, atol=1e-5)
        layer.coded[0].packed.zero_()  # the codes change: decoded again, once
        y2 = layer(x)
        layer(x)
    assert len(calls) == len(layer.coded)
    assert not torch.equal(y2, y)
    assert all(not p.requires_grad for p in layer.inner.tt_cores)


def test_methods_that_do_not_take_factor_tensors_skip_with_a_reason(model):
    tt = FIRSTS["tt_linear"][0]
    for method in ("magnitude_prune", "binary"):
        _, report = compressed([tt, {"method": method}], model)
        reasons = {s.name: s.reason for s in report.skipped if s.method == method}
        assert {"fc1", "fc2"} <= set(reasons), (method, reasons)
        assert all(r.strip() for r in reasons.values())
        assert not [c for c in report.layers if c.method == method and c.name.startswith("fc")]
    _, report = compressed([tt, {"method": "binary"}], model)
    reason = next(s.reason for s in report.skipped if s.name == "fc1")
    assert "factor tensors" in reason
    # Codes are final: a third quantizer is refused when the recipe is built.
    with pytest.raises(ConfigError, match="already quantized"):
        Recipe.from_list([tt, SECONDS["quantize_weights8"], {"method": "int8"}])


def test_deployed_and_exported_forms_keep_the_output(model):
    recipe = [{"method": "tt", "rank": 8}, SECONDS["quantize_weights8"]]
    small, _ = compressed(recipe, model)
    assert {type(m).__name__ for m in _top_compressed(small).values()} == {"FactorQuantized"}
    with torch.no_grad():
        y = small(SAMPLE)
    fast, _ = compressed(recipe, model, deploy=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(SAMPLE), y, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(exportable(small)(SAMPLE), y, rtol=1e-4, atol=1e-5)
    got = run_onnx(to_onnx_bytes(small, SAMPLE), SAMPLE)
    torch.testing.assert_close(torch.as_tensor(got), y, rtol=1e-3, atol=1e-4)
