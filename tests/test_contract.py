"""One battery of checks run on every registered method (parametrized over list_methods()).

A new method gets these for free: its example changes some layer, a no-op setting leaves outputs
unchanged (or, for methods without one, applying it again changes nothing), the Report's counts
agree with the modules, the caller's model is untouched, and save/load is bit-exact.
"""

from __future__ import annotations

import copy

import pytest
import torch

import modelzip
from modelzip.core.counting import count_params, module_bytes
from modelzip.core.registry import get_method, list_methods


def _dense_form(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.to_dense() if hasattr(layer, "to_dense") else copy.deepcopy(layer)


@pytest.fixture(params=list_methods())
def method(request) -> str:
    return request.param


def test_example_changes_layers_and_counts_are_right(method, model_for_method):
    model, x = model_for_method(method)
    spec = get_method(method)
    small, report = modelzip.compress(model, spec.example, sample=x, measure=False, deploy=False)
    assert report.layers, f"{method}'s example changed no layer of its test model"
    modules = dict(model.named_modules())
    new_modules = dict(small.named_modules())
    for change in report.layers:
        assert change.params_before == count_params(modules[change.name])
        assert change.params_after == count_params(new_modules[change.name])
        assert change.bytes_before == module_bytes(modules[change.name])
        assert change.bytes_after == module_bytes(new_modules[change.name])
    assert report.before.params == count_params(model)
    assert report.after.params == count_params(small)
    assert report.before.params - report.after.params == sum(
        c.params_before - c.params_after for c in report.layers
    )
    assert report.after.size_bytes == module_bytes(small)
    assert small(x).shape == model(x).shape


def test_noop_leaves_outputs_unchanged(method, model_for_method):
    model, x = model_for_method(method)
    spec = get_method(method)
    with torch.inference_mode():
        ref = model(x)
    if spec.noop is not None:
        small, _ = modelzip.compress(model, spec.noop, sample=x, measure=False)
        with torch.inference_mode():
            torch.testing.assert_close(small(x), ref, rtol=1e-5, atol=1e-5)
    else:
        # No setting of this method is a no-op: applying it to its own result changes nothing.
        once, report = modelzip.compress(model, spec.example, sample=x, measure=False, deploy=False)
        dense = copy.deepcopy(model)
        for change in report.layers:
            layer = once.get_submodule(change.name)
            # Plain torch layers (resized by channel removal) are their own dense form.
            dense.set_submodule(change.name, _dense_form(layer))
        twice, _ = modelzip.compress(dense, spec.example, sample=x, measure=False, deploy=False)
        with torch.inference_mode():
            torch.testing.assert_close(twice(x), once(x), rtol=1e-4, atol=1e-4)


def test_input_model_not_mutated(method, model_for_method):
    model, x = model_for_method(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    modelzip.compress(model, get_method(method).example, sample=x, measure=False)
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_inplace_changes_the_model(method, model_for_method):
    model, x = model_for_method(method)
    small, report = modelzip.compress(
        model, get_method(method).example, sample=x, measure=False, inplace=True
    )
    # The caller's object is changed; a deployed model whose layers are linked (int8 chain,
    # sparse runs) runs as a wrapper around it.
    assert small is model or small.__dict__.get("_modelzip_eager") is model
    first = report.layers[0]
    # The layer is in its deployed form when the deploy step changed it, else as compressed.
    deployed = {d["name"]: d["after"] for d in report.deployment if d["form"]}
    assert type(model.get_submodule(first.name)).__name__ == deployed.get(first.name, first.after)


def test_save_load_bit_exact(method, model_for_method, tmp_path):
    model, x = model_for_method(method)
    small, report = modelzip.compress(model, get_method(method).example, sample=x, measure=False)
    path = modelzip.save(small, tmp_path / "m.mzip")
    loaded = modelzip.load(path)
    with torch.inference_mode():
        assert torch.equal(loaded(x), small.eval()(x))
    # What the Report counts is what the file holds (plus the header and JSON metadata).
    assert path.stat().st_size >= report.after.size_bytes
    assert path.stat().st_size - report.after.size_bytes < 64 * 1024


def test_compressed_layers_equal_their_dense_form(method, model_for_method):
    model, x = model_for_method(method)
    small, report = modelzip.compress(
        model, get_method(method).example, sample=x, measure=False, deploy=False
    )
    for change in report.layers:
        layer = small.get_submodule(change.name)
        if not hasattr(layer, "to_dense"):
            continue  # a plain torch layer (resized by channel removal) is already dense
        dense = layer.to_dense()
        dense_model = copy.deepcopy(small)
        dense_model.set_submodule(change.name, dense)
        with torch.inference_mode():
            got, want = small(x), dense_model(x)
        if getattr(layer, "activations", "float") != "float":
            # The layer also quantizes its input (per batch or with calibrated ranges; fbgemm
            # uses 7 of the 8 bits): equal up to that rounding, a few percent of the output range.
            assert (got - want).abs().max() <= 0.05 * want.abs().max()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
