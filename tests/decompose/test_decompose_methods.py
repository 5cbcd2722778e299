"""Registered handlers, config round trips, layer-naming errors and the global rank budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip.decompose  # noqa: F401  (registers the methods)
from modelzip.core.context import Context
from modelzip.core.counting import count_params
from modelzip.core.errors import ModelError
from modelzip.core.registry import SkipLayer, get_method, list_methods
from modelzip.decompose import allocate_ranks

NAMES = [
    "svd",
    "lowrank_spatial",
    "tucker2",
    "cp",
    "tt",
    "ht",
    "tucker_tensorized",
    "rnn_lowrank",
    "rnn_tt",
    "rnn_ht",
]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def test_all_methods_registered_in_the_decompose_family():
    for name in NAMES:
        assert name in list_methods()
        assert get_method(name).family == "decompose"


@pytest.mark.parametrize("name", NAMES)
def test_config_roundtrip_and_handlers(name):
    spec = get_method(name)
    for config in (spec.example, spec.noop):
        assert type(config).from_dict(config.to_dict()) == config
    if set(spec.config_type.default_types) & {"LSTM", "GRU", "RNN"}:
        module, x = nn.LSTM(8, 8, batch_first=True), torch.randn(2, 3, 8)
    elif "Linear" in spec.config_type.default_types:
        module, x = nn.Linear(48, 32), torch.randn(2, 48)
    else:
        module, x = nn.Conv2d(8, 12, 3, padding=1), torch.randn(2, 8, 6, 6)
    ctx = Context(model=nn.Sequential(module))
    with torch.inference_mode():
        ref = module(x)
        out = spec.handler(module, spec.noop, ctx)(x)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    small = spec.handler(module, spec.example, ctx)
    assert count_params(small) < sum(p.numel() for p in module.parameters())


def test_errors_name_the_layer_and_grouped_convs_are_skipped():
    model = _model()
    ctx = Context(model=model)
    svd = get_method("svd")
    with pytest.raises(ModelError, match=r"layer '6'.*allowed \[1, 10\]"):
        svd.handler(model[6], svd.example.replace(rank_fraction=None, rank=11), ctx)
    with pytest.raises(SkipLayer, match="grouped"):
        svd.handler(nn.Conv2d(4, 4, 3, groups=2), svd.example, ctx)
    with pytest.raises(SkipLayer):
        get_method("tucker2").handler(nn.Linear(4, 4), get_method("tucker2").example, ctx)


@pytest.mark.parametrize("method", ["svd", "tucker2", "tt", "ht", "cp"])
def test_allocate_ranks_meets_the_budget(method):
    model = _model()
    spec = get_method(method)
    dense = sum(
        count_params(m)
        for _, m in spec.example.select.select(model, spec.config_type.default_types)
    )
    budget = dense // 2
    fields = {"n_iter_max": 5} if method == "cp" else {}
    configs = allocate_ranks(model, budget, method, **fields)
    ctx = Context(model=model)
    total = 0
    for name, config in configs.items():
        layer = spec.handler(model.get_submodule(name), config, ctx)
        total += count_params(layer)
    assert 0.3 * budget <= total <= budget
    with pytest.raises(ModelError, match="smallest ranks"):
        allocate_ranks(model, 10, method)
