"""Models from the wild (wild_models.py) through every registered method.

Each method either handles each layer (the model still runs, keeps its output shape, gives
finite outputs, and its no-op setting changes no output) or skips it with a Report entry naming
the layer and the reason; whole-model refusals are modelzip errors naming the layer. The same
seed gives byte-identical compressed files for every method.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch

# Imported here, so resolve_model('wild_models:...') needs no trust_remote_code.
from wild_models import INPUTS

import modelzip
from modelzip.core.errors import ModelzipError
from modelzip.core.registry import get_method, list_methods
from modelzip.models import resolve_model

METHODS = list_methods()
MODELS = sorted(INPUTS)


@functools.cache
def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = resolve_model(f"wild_models:{name}").eval()
    with torch.no_grad():  # non-trivial BN statistics, so that folding them is tested for real
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model, INPUTS[name]()


def _compress(model, config, x, deploy=True):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small, report = modelzip.compress(model, config, sample=x, measure=False, deploy=deploy)
    return small, report, [str(w.message) for w in caught]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_handles_or_skips_every_layer(method, model_name):
    model, x = _model(model_name)
    names = dict(model.named_modules())
    try:
        small, report, _ = _compress(model, get_method(method).example, x)
    except ModelzipError as e:
        # A refusal of the whole model must say which layer and why.
        assert any(f"'{n}'" in str(e) for n in names if n), e
        return
    with torch.inference_mode():
        want, got = model(x), small(x)
    assert got.shape == want.shape and torch.isfinite(got).all()
    for change in report.layers:
        assert change.name in names
    for skip in report.skipped:
        assert skip.name in names and skip.reason, skip
    spec = get_method(method)
    if spec.noop is not None:
        same, _, _ = _compress(model, spec.noop, x)
        with torch.inference_mode():
            torch.testing.assert_close(same(x), want, rtol=1e-5, atol=1e-5)


def test_transformer_fast_path_layers_are_skipped_with_the_reason():
    model, x = _model("torch_transformer")
    _, report, _ = _compress(model, get_method("quantize_weights").example, x)
    reasons = {s.name: s.reason for s in report.skipped}
    assert "TransformerEncoderLayer" in reasons["encoder.linear1"]
    # The token embedding is compressed as a table (no layer reads it directly).
    assert [c.name for c in report.layers] == ["embed", "head"]


def test_shared_module_stays_shared():
    model, x = _model("functional_shared")
    small, report, _ = _compress(model, get_method("magnitude_prune").example, x)
    assert "shared" in [c.name for c in report.layers]
    # Deploy may link the pruned linears into one sparse run (when measured faster): the linked
    # model runs its eager model's layers, where the shared one is still one module.
    eager = small.__dict__.get("_modelzip_eager", small)
    assert sum(1 for n, _ in eager.named_modules(remove_duplicate=False) if n == "shared") == 1
    with torch.inference_mode():
        torch.testing.assert_close(small(x), eager(x))


def _changing_model(method: str, model_for_method) -> tuple[torch.nn.Module, torch.Tensor]:
    for name in MODELS:
        model, x = _model(name)
        if _compress(model, get_method(method).example, x)[1].layers:
            return model, x
    return model_for_method(method)  # recurrent methods: the zoo's small LSTM


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_byte_identical_files(method, model_for_method, tmp_path):
    model, x = _changing_model(method, model_for_method)
    files = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # the global RNG must not matter, only compress's seed
        # Not deployed: which executable form is fastest is measured, and may differ by run.
        small, report, _ = _compress(
            copy.deepcopy(model), get_method(method).example, x, deploy=False
        )
        files.append(modelzip.save(small, tmp_path / f"{i}.mzip").read_bytes())
    assert report.layers, f"{method} changed nothing to compare"
    assert files[0] == files[1], f"{method}: two runs with the same seed wrote different files"


def test_wild_models_rebuild_from_their_files(tmp_path):
    for name in MODELS:
        model, x = _model(name)
        path = modelzip.save(model, tmp_path / f"{name}.mzip")
        with torch.inference_mode():
            assert torch.equal(modelzip.load(path)(x), model(x)), name
