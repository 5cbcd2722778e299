"""The XNOR-inputs link (:mod:`modelzip.kernels.xnor_inputs`): a deployed XNOR convolution reads
the 2×2 max pool and hardtanh before it in its packing pass; the same outputs as the unlinked
model, through compress, save/load and back to the trainable form."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.model_links import model_link, unlink
from modelzip.deploy import materialize, trainable
from modelzip.kernels.layers import READS_ATTR, BinaryConv2d
from modelzip.models import create
from modelzip.recipe import Recipe

XNOR = Recipe.from_list(
    [{"method": "xnor_net", "scale_activations": True, "keep_first_last": True}]
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return create("lenet5_wide").eval()


def _sample() -> torch.Tensor:
    return torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _reads(model: nn.Module) -> list[tuple[bool, bool]]:
    return [m.__dict__[READS_ATTR] for m in model.modules() if READS_ATTR in m.__dict__]


def test_compress_links_and_agrees(tmp_path: Path) -> None:
    x = _sample()
    model, report = modelzip.compress(_net(), XNOR, sample=x)
    assert isinstance(model, torch.fx.GraphModule)
    assert _reads(model) == [(True, True)]  # conv2 reads pool1 and act1
    assert "XNOR inputs: 1 XNOR convolution" in report.deploy_note
    with torch.no_grad():
        y = model(x)
        ref = trainable(model)(x)  # the compressed model, every op run as written
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    # Saved and loaded: linked again, the same outputs; back to trainable: no reads left.
    path = tmp_path / "xnor.mzip"
    modelzip.save(model, path)
    loaded = modelzip.load(path)
    assert _reads(loaded) == [(True, True)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=1e-5, atol=1e-5)
    back = trainable(loaded)
    assert _reads(back) == [] and not isinstance(back, torch.fx.GraphModule)


def test_unlink_restores_the_eager_model() -> None:
    x = _sample()
    deployed, _ = modelzip.compress(_net(), XNOR, sample=x)
    with torch.no_grad():
        y = deployed(x)
    eager = unlink(deployed)
    assert _reads(eager) == [] and not isinstance(eager, torch.fx.GraphModule)
    with torch.no_grad():
        torch.testing.assert_close(eager(x), y, rtol=1e-4, atol=1e-4)


def _binary_conv(cin: int = 8) -> BinaryConv2d:
    conv = nn.Conv2d(cin, 4, 3, padding=1)
    with torch.no_grad():  # rows of ±α, as the binarizing methods leave them
        w = conv.weight
        w.copy_(torch.where(w < 0, -1.0, 1.0) * w.abs().mean(dim=(1, 2, 3), keepdim=True))
    return BinaryConv2d.from_dense(conv, "xnor", act_scale=True)


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ([nn.MaxPool2d(2), nn.Hardtanh()], (True, True)),
        ([nn.MaxPool2d(2)], (True, False)),
        ([nn.Hardtanh()], (False, True)),
        ([nn.MaxPool2d(3), nn.Hardtanh()], (False, True)),  # 3×3 pooling: only the clamp
        ([nn.MaxPool2d(2), nn.Hardtanh(-2.0, 2.0)], None),  # not the unit hardtanh: nothing
        ([nn.ReLU()], None),
    ],
)
def test_what_a_convolution_reads(before: list[nn.Module], expected: tuple | None) -> None:
    layers = [("conv0", nn.Conv2d(3, 8, 3)), *[(f"op{i}", m) for i, m in enumerate(before)]]
    model = nn.Sequential(OrderedDict([*layers, ("xconv", _binary_conv())])).eval()
    x = torch.randn(2, 3, 17, 15)
    with torch.no_grad():
        ref = model(x)
    linked, links, why = model_link("xnor_inputs")[0](model)
    if expected is None:
        assert links == 0 and linked is model and "no XNOR convolution reads" in why
        return
    assert links == 1 and _reads(linked) == [expected]
    with torch.no_grad():
        torch.testing.assert_close(linked(x), ref, rtol=1e-5, atol=1e-5)


def test_pool_read_elsewhere_is_left_alone() -> None:
    """A pool whose output another op reads too stays a pool (the hardtanh is still read)."""

    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool, self.act, self.xconv = nn.MaxPool2d(2), nn.Hardtanh(), _binary_conv()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.pool(x)
            return self.xconv(self.act(p)).sum() + p.sum()

    model = Branch().eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        ref = model(x)
    linked, links, _ = model_link("xnor_inputs")[0](model)
    assert links == 1 and _reads(linked) == [(False, True)]
    with torch.no_grad():
        torch.testing.assert_close(linked(x), ref, rtol=1e-4, atol=1e-3)


def test_materialize_without_sample_links_unchecked() -> None:
    model, _ = modelzip.compress(_net(), XNOR, sample=_sample(), deploy=False)
    deployed, report = materialize(model)
    assert _reads(deployed) == [(True, True)] and report.xnor_inputs.startswith("1 XNOR")
