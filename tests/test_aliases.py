"""A layer used twice (one object under two names) stays one object after compression (issue 19).

Replacing only the alias a handler selected left the other calling the old layer: the model
computed something its Report did not describe.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.context import aliases, replace_module
from modelzip.core.registry import get_method
from modelzip.prune.schedule import GlobalPruneConfig
from modelzip.quantize.inq import INQConfig


def aliased_model() -> nn.Sequential:
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    return nn.Sequential(shared, nn.ReLU(), shared).eval()


def test_replace_module_replaces_every_alias() -> None:
    model = aliased_model()
    other = nn.Sequential(model, nn.Linear(16, 4))
    new = nn.Linear(16, 16)
    assert aliases(other, model[0]) == ["0.0", "0.2"]
    assert replace_module(other, "0.2", new) == ["0.2", "0.0"]
    assert other[0][0] is new and other[0][2] is new
    assert aliases(other, new) == ["0.0", "0.2"]


@pytest.mark.parametrize(
    "config",
    [
        get_method("magnitude_prune").example,  # per layer: the loop in api.py keeps aliases
        GlobalPruneConfig(sparsity=0.5),  # model scope: each handler replaces the layers itself
        INQConfig(bits=5, epochs_per_stage=0),
    ],
    ids=lambda c: c.method,
)
def test_shared_layer_stays_shared(config: modelzip.MethodConfig) -> None:
    model = aliased_model()
    x = torch.randn(5, 16)
    small, report = modelzip.compress(model, config, sample=x, measure=False, deploy=False)
    layer = small[0]
    assert type(layer) is not nn.Linear, "the example changed nothing"
    assert small[2] is layer  # both positions hold the one compressed object
    assert [c.name for c in report.layers] == ["0"]  # ... and the Report names it once
    with torch.no_grad():
        torch.testing.assert_close(small(x), layer(torch.relu(layer(x))))
