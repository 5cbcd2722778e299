"""A deployed model holds its compressed weights once: no float copy left by the deploy step's
checks or by counting, and the compact source a deployed layer keeps shares the tensors the
layer holds unchanged."""

from __future__ import annotations

import pytest
import torch

import modelzip
from modelzip.core.compact_source import compact_source
from modelzip.models import create
from modelzip.quantize.int8_method import Int8Config


def _float_copies(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if "_weight_cache" in m.__dict__]


@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_deployed_int8_model_keeps_no_float_weights(activations: str, tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    out, report = modelzip.compress(create("lenet300").eval(), Int8Config(activations=activations),
                                    sample=x, measure=False, evaluate=False)  # fmt: skip
    assert report.deployment, "deployed"
    assert _float_copies(out) == []
    loaded = modelzip.load(modelzip.save(out, tmp_path / "m.mzip"))
    assert _float_copies(loaded) == []
    with torch.no_grad():
        assert torch.equal(loaded(x), out(x))
    for model in (out, loaded):
        for _, layer in model.named_modules():
            source = compact_source(layer)
            own = layer.state_dict(keep_vars=True)
            if source is None or "codes" not in own:  # a float form needs the codes kept apart
                continue
            shared = [
                k for k, t in source.state.items() if k in own and t.data_ptr() == own[k].data_ptr()
            ]
            assert "codes" in shared, f"{type(layer).__name__} keeps a second copy of its codes"


def test_shared_source_rebuilds_the_trainable_layer() -> None:
    """The shared tensors are read, not aliased, when the trainable form is rebuilt: training it
    leaves the deployed model unchanged."""
    from modelzip.deploy import trainable

    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    out, _ = modelzip.compress(create("lenet300").eval(), Int8Config(activations="dynamic"),
                               sample=x, measure=False, evaluate=False)  # fmt: skip
    with torch.no_grad():
        before = out(x)
    back = trainable(out)
    with torch.no_grad():
        for m in back.modules():
            if hasattr(m, "codes"):
                m.codes.zero_()
        assert torch.equal(out(x), before)
