"""The fused TT-conv kernel equals TTConv2d's own forward on every geometry it takes, falls back to
it where it cannot run, and is what materialize() offers for a TT-conv."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.errors import ModelError
from modelzip.core.geometry import ConvGeometry
from modelzip.decompose.configs import TTConfig
from modelzip.decompose.tt import TTConv2d
from modelzip.kernels import _native, materialize
from modelzip.kernels.tt_conv import FusedTTConv2d, plan_groups

needs_native = pytest.mark.skipif(
    _native.unavailable_reason() is not None,
    reason=f"native kernels unavailable: {_native.unavailable_reason()}",
)

# (in, out, in_modes, out_modes, ranks, kernel, padding, dilation, input H×W, bias)
GEOMETRIES: list[tuple[Any, ...]] = [
    (64, 64, (4, 4, 4), (4, 4, 4), (3, 5, 6, 1), 3, 1, 1, (9, 11), True),  # "same": flat tiles
    (30, 20, (4, 8), (4, 6), (4, 7, 1), 3, 0, 1, (13, 21), True),  # padded modes, row tiles
    (12, 27, (2, 2, 3), (3, 3, 3), (11, 3, 4, 1), (3, 5), (2, 1), (2, 1), (7, 20), False),  # r0 > 8
    (16, 16, (4, 4), (4, 4), (2, 5, 1), 1, 0, 1, (5, 5), True),  # 1×1
    (30, 24, (2, 3, 5), (2, 3, 4), (5, 4, 6, 1), 5, 2, 1, (17, 16), True),  # 5×5, odd modes
    (64, 64, (4, 4, 4), (4, 4, 4), (2, 4, 4, 1), 3, 1, 1, (10, 10), True),  # 1 × 16 tiles
]


def test_the_geometries_reach_both_register_tilings() -> None:
    widths = set()
    for geometry in GEOMETRIES:
        _, fused = _pair(geometry)
        widths |= {w.shape[1] % 16 == 0 for w in fused._build_steps()[1]}
    assert widths == {True, False}  # 1 × 16 tiles where N is a multiple of 16, else 4 × 4


def _pair(geometry: tuple[Any, ...], seed: int = 0) -> tuple[TTConv2d, FusedTTConv2d]:
    i, o, im, om, ranks, k, pad, dil, _, bias = geometry
    torch.manual_seed(seed)
    layer = TTConv2d(ConvGeometry(i, o, k, padding=pad, dilation=dil), im, om, ranks, bias=bias)
    for p in layer.parameters():
        nn.init.normal_(p, std=0.5)
    return layer.eval(), FusedTTConv2d.from_tt(layer).eval()


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    scale = float(ref.abs().max())
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5 * scale)


@needs_native
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}to{g[1]}k{g[5]}p{g[6]}")
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_equals_tt_conv(geometry: tuple[Any, ...], batch: int) -> None:
    layer, fused = _pair(geometry)
    x = torch.randn(batch, geometry[0], *geometry[8])
    with torch.no_grad():
        assert fused.fused_unavailable(x) is None
        y = fused(x)
        ref = layer(x)
    assert y.shape == ref.shape
    _close(y, ref)
    with torch.no_grad():  # channels-last input is made contiguous, not misread
        _close(fused(x.contiguous(memory_format=torch.channels_last)), ref)


@needs_native
def test_fused_follows_weight_updates() -> None:
    layer, fused = _pair(GEOMETRIES[0])
    x = torch.randn(2, 64, 9, 11)
    with torch.no_grad():
        fused(x)  # builds the merged matrices
        for lyr in (layer, fused):
            lyr.tt_cores[1].mul_(-2.0)
            lyr.spatial.weight.add_(0.1)
            lyr.bias.fill_(3.0)
        _close(fused(x), layer(x))


def test_fused_falls_back_where_the_kernel_cannot_run() -> None:
    layer, fused = _pair(GEOMETRIES[1])
    x = torch.randn(2, 30, 13, 21, requires_grad=True)
    assert "autograd" in (fused.fused_unavailable(x) or "")
    y = fused(x)  # TTConv2d's forward: gradients flow
    y.sum().backward()
    assert x.grad is not None and fused.tt_cores[0].grad is not None
    with torch.no_grad():
        _close(y, layer(x))
        assert "float32 CPU" in (fused.fused_unavailable(x.double()) or "")
        strided = TTConv2d(ConvGeometry(30, 20, 3, stride=2), (4, 8), (4, 6), (4, 7, 1))
        strided = FusedTTConv2d.from_tt(strided)
        assert "stride 1" in (strided.fused_unavailable(x) or "")
        assert strided(x).shape == (2, 20, 6, 10)


def test_fused_without_the_extension_runs_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELZIP_NATIVE", "0")
    layer, fused = _pair(GEOMETRIES[0])
    x = torch.randn(1, 64, 9, 11)
    with torch.no_grad():
        assert fused.fused_unavailable(x) == "disabled by MODELZIP_NATIVE=0"
        _close(fused(x), layer(x))


def test_the_grouping_has_the_fewest_macs() -> None:
    im, om, ranks = (4, 4, 4, 4), (4, 4, 4, 4), (4, 8, 8, 8, 1)
    groups, macs = plan_groups(im, om, ranks)
    # Hand count: core 1 (K=16, N=32, 64 rows), core 2 (32, 32, 64), cores 3-4 merged (128, 16, 16).
    assert groups == ((0, 1), (1, 2), (2, 4))
    assert macs == 64 * 16 * 32 + 64 * 32 * 32 + 16 * 128 * 16
    one_by_one = sum(
        math.prod(om[:k]) * math.prod(im[k + 1 :]) * ranks[k] * im[k] * om[k] * ranks[k + 1]
        for k in range(4)
    )
    assert macs < one_by_one
    for d in (1, 2, 3):
        for modes in itertools.product((2, 3), repeat=d):
            g, m = plan_groups(modes, modes[::-1], (3,) + (2,) * (d - 1) + (1,))
            assert g[0][0] == 0 and g[-1][1] == d and m > 0
            assert all(a[1] == b[0] for a, b in itertools.pairwise(g))


@needs_native
def test_fused_is_a_tt_conv_that_builds_from_dense() -> None:
    layer, fused = _pair(GEOMETRIES[0])
    dense = layer.to_dense()
    x = torch.randn(2, 64, 9, 11)
    with torch.no_grad():
        _close(fused(x), dense(x))
        again = FusedTTConv2d.from_dense(dense, ranks=layer.ranks)
        _close(again(x), dense(x))  # the kernel's own TT ranks: exact
    with pytest.raises(ModelError, match="3 mode pairs need 3 ranks"):
        FusedTTConv2d.from_dense(dense, ranks=(3, 5))


@needs_native
def test_a_model_with_a_fused_tt_conv_saves_and_loads(tmp_path: Any) -> None:
    from modelzip.models import create

    torch.manual_seed(0)
    model = create("lenet5").eval()
    modes = TTConfig(in_modes=(4, 5), out_modes=(5, 10))
    model.conv2 = FusedTTConv2d.from_dense(model.conv2, modes, ranks=(4, 6))
    x = torch.randn(3, 1, 28, 28)
    path = modelzip.save(model, tmp_path / "ttconv.mzip")
    loaded = modelzip.load(path)
    assert isinstance(loaded.conv2, FusedTTConv2d)
    with torch.no_grad():
        assert loaded.conv2.fused_unavailable(torch.randn(1, 20, 12, 12)) is None
        _close(loaded(x), model(x))


@needs_native
def test_materialize_offers_the_fused_kernel() -> None:
    layer, _ = _pair(GEOMETRIES[0])
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.randn(4, 64, 9, 11)
    new, report = materialize(model, x, reps=1, choose="compressed", layout="contiguous")
    assert isinstance(new[0], FusedTTConv2d)
    assert report.layers[0].kernel == "fused TT-conv (AVX-512)"
    with torch.no_grad():
        _close(new(x), model(x))
    assert not isinstance(model[0], FusedTTConv2d)  # the caller's model is untouched
