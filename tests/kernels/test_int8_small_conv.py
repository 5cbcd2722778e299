"""The first-layer static int8 conv on the native kernel (``native/int8_conv.h``,
:mod:`modelzip.kernels.int8_small_conv`): its codes against the exact integer conv requantized
as PyTorch's engines do, on its three paths (VNNI, 7-bit quads, 16-bit pairs), full-range inputs;
the deploy form, a file saved with it, and that file without the native kernels."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from modelzip.kernels import int8_small_conv as small
from modelzip.kernels._native import native
from modelzip.kernels.int8 import ENGINE_ATTR, prepack_conv2d

NATIVE = native()
needs_native = pytest.mark.skipif(NATIVE is None, reason="no native build runs on this CPU")

# (C, Cout, kernel, padding, H, W): LeNet-5's and a ResNet's first layers, RGB 7×7, odd channel
# counts (a partial block of 8), rows shorter and longer than one vector of pixels.
CASES = [
    (1, 20, (5, 5), (0, 0), 28, 28),
    (1, 16, (3, 3), (1, 1), 28, 28),
    (3, 33, (3, 3), (1, 1), 17, 15),
    (3, 5, (7, 7), (3, 3), 21, 40),
    (2, 9, (3, 2), (2, 0), 11, 13),
    (4, 3, (4, 4), (1, 2), 6, 5),
]


def _quantized(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(x, scale, zero, torch.quint8)


def _exact(qx, codes, scale, bias, padding, out_scale, out_zero, relu):
    """The conv's output codes computed exactly (float64 over integers), requantized as the
    engines do: PyTorch's own int8 convs saturate without VNNI on full-range inputs, so they are
    no reference under the AVX2 fallback."""
    x = qx.int_repr().double() - qx.q_zero_point()
    acc = torch.nn.functional.conv2d(x, codes.double(), padding=padding)
    y = acc * (qx.q_scale() * scale.double()).reshape(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.double().reshape(1, -1, 1, 1)
    q = torch.round(y / out_scale) + out_zero
    return q.clamp(out_zero if relu else 0, 255).int()


def _case(c, cout, kernel, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (cout, c, *kernel), generator=g, dtype=torch.int8)
    scale = torch.rand(cout, generator=g) * 0.01 + 0.001
    bias = torch.randn(cout, generator=g)
    return codes, scale, bias, g


@needs_native
@pytest.mark.parametrize("path", [0, 1, 2])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("c", "cout", "kernel", "padding", "h", "w"), CASES)
def test_codes_match_pytorch_engine(monkeypatch, path, relu, c, cout, kernel, padding, h, w):
    """Paths: the CPU's best (VNNI here where it has it), 7-bit quads, 16-bit pairs."""
    monkeypatch.setattr(small, "PATH", path)
    codes, scale, bias, g = _case(c, cout, kernel, seed=cout)
    # Full-range inputs (codes up to 255, zero point 37), where VPMADDUBSW would saturate; the
    # 7-bit path on codes below 128 (the reduced range), where it must not.
    x = torch.rand(3, c, h, w, generator=g) * 2.5 - 0.3
    qx = _quantized(x.clamp(max=0.9), 0.01, 37) if path == 1 else _quantized(x, 0.01, 37)
    if path == 1:
        assert int(qx.int_repr().max()) < 128
    geo = ((1, 1), padding, (1, 1), 1)
    ref = _exact(qx, codes, scale, bias, padding, 0.05, 100, relu)
    got = small.conv_op(qx, small.prepack(codes, scale, bias, *geo), 0.05, 100, relu=relu)
    assert got.shape == ref.shape and got.is_quantized
    assert got.q_scale() == 0.05 and got.q_zero_point() == 100
    diff = (got.int_repr().int() - ref).abs()
    # The same integer products; the float requantization may round a tie the other way.
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) < 0.01
    if relu:
        assert int(got.int_repr().min()) >= 100


@needs_native
def test_per_tensor_scale_and_no_bias():
    codes, _, _, g = _case(1, 6, (3, 3), seed=1)
    qx = _quantized(torch.rand(2, 1, 9, 9, generator=g), 0.004, 0)
    scale, geo = torch.tensor([0.02]), ((1, 1), (0, 0), (1, 1), 1)
    ref = _exact(qx, codes, scale.expand(6), None, (0, 0), 0.1, 5, False)
    got = small.conv_op(qx, small.prepack(codes, scale, None, *geo), 0.1, 5)
    assert int((got.int_repr().int() - ref).abs().max()) <= 1


def test_which_convs_qualify():
    def geo(**kw):
        base = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
        return SimpleNamespace(**{**base, **kw})  # a ConvGeometry's four fields

    assert small.qualifies(torch.Size([20, 1, 5, 5]), geo())
    assert not small.qualifies(torch.Size([20, 3, 5, 5]), geo())  # K = 75 > MAX_K
    assert not small.qualifies(torch.Size([20, 1, 3, 3]), geo(groups=2))
    assert not small.qualifies(torch.Size([20, 1, 3, 3]), geo(padding="same"))
    assert not small.qualifies(torch.Size([20, 1, 3, 3]), geo(stride=(2, 2)))
    assert not small.qualifies(torch.Size([20, 1, 3, 3]), geo(dilation=(2, 2)))
    with pytest.raises(ValueError, match="stride 1"):
        small.prepack(torch.zeros(4, 1, 3, 3, dtype=torch.int8), torch.ones(4), None, 2, 0, 1, 1)


def test_without_native_the_default_engine_runs(monkeypatch):
    """A file deployed with the form runs where the native kernels are not built."""
    monkeypatch.setattr("modelzip.kernels._native.native", lambda: None)
    codes, scale, bias, g = _case(1, 7, (3, 3), seed=3)
    x = torch.rand(2, 1, 8, 8, generator=g)
    qx = _quantized(x, 0.01, 0)
    geo = ((1, 1), (1, 1), (1, 1), 1)
    ref = torch.ops.quantized.conv2d(qx, prepack_conv2d(codes, scale, bias, *geo), 0.05, 9)
    packed = small.prepack(
        codes, scale, bias, *geo, lambda: prepack_conv2d(codes, scale, bias, *geo)
    )
    got = small.conv_op(qx, packed, 0.05, 9)
    assert torch.equal(got.int_repr(), ref.int_repr())
    got = small.conv_op(x, packed, 0.05, 9, in_grid=(0.01, 0, 255))  # quantized here first
    assert torch.equal(got.int_repr(), ref.int_repr())
    with pytest.raises(RuntimeError, match="no fallback"):
        small.conv_op(qx, small.prepack(codes, scale, bias, *geo), 0.05, 9)


@needs_native
def test_the_form_builds_runs_and_saves(tmp_path):
    import modelzip
    from modelzip.core.compact_source import remember_source
    from modelzip.core.forms import build_form, candidates
    from modelzip.models import create
    from modelzip.recipe import Recipe
    from modelzip.serialize import load, save

    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    recipe = Recipe.from_list([{"method": "int8", "activations": "static"}])
    model, _ = modelzip.compress(create("lenet5").eval(), recipe, sample=x, deploy=False)
    layer = model.conv1  # 1 -> 20 channels, 5×5; conv2's K is 500
    assert "int8:static native" in [k for k, _ in candidates(layer, x)]
    assert "int8:static native" not in [k for k, _ in candidates(model.conv2, x)]
    new = build_form(layer, "int8:static native")
    assert new.__dict__[ENGINE_ATTR] == small.ENGINE
    with torch.no_grad():
        ref, got = layer(x), new(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= float(layer.out_scale) * 1.01  # one code at most
    remember_source(new, layer, "int8:static native")  # as the deploy step records its choice
    model.conv1 = new
    path = tmp_path / "m.mzip"
    save(model, path)
    back = load(path)
    assert back.conv1.__dict__.get(ENGINE_ATTR) == small.ENGINE
    with torch.no_grad():
        assert torch.allclose(back(x), model(x))


@needs_native
@pytest.mark.parametrize("qmax", [255, 127])
def test_a_float_input_is_quantized_in_the_kernel_as_pytorch_does(qmax):
    """The kernel reads float images itself: the same codes as quantize_per_tensor (and the clamp
    at a 7-bit top code) followed by the kernel on those codes; widths with and without a tail
    of fewer than 8 values, huge and infinite values at the ends of the range."""
    codes, scale, bias, g = _case(1, 12, (3, 3), seed=5)
    packed = small.prepack(codes, scale, bias, (1, 1), (1, 1), (1, 1), 1)
    for w in (9, 16, 30):
        x = torch.randn(2, 1, 7, w, generator=g) * 2
        x[0, 0, 0, :3] = torch.tensor([1e12, -1e12, float("inf")])
        x[1, 0, 3, -1] = float("-inf")
        qx = _quantized(x.clamp(-1e6, 1e6), 0.013, 40)
        if qmax < 255:
            qx = torch.clamp(qx, max=(qmax - 40) * 0.013)
        ref = small.conv_op(qx, packed, 0.05, 100)
        got = small.conv_op(x, packed, 0.05, 100, in_grid=(0.013, 40, qmax))
        assert got.q_scale() == 0.05 and got.q_zero_point() == 100
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got.int_repr(), ref.int_repr())
    with pytest.raises(ValueError, match="input grid"):
        small.conv_op(x, packed, 0.05, 100)


@needs_native
def test_an_input_affine_runs_in_the_quantization():
    """``in_affine`` (a, b): the kernel quantizes ``x·a + b`` as it reads ``x`` (the int8
    chain's folded normalization): the codes of quantizing ``x·a + b`` first, at most one apart
    (float rounding of the product at a tie); refused for a quint8 input."""
    codes, scale, bias, g = _case(1, 12, (3, 3), seed=6)
    packed = small.prepack(codes, scale, bias, (1, 1), (1, 1), (1, 1), 1)
    x = torch.rand(3, 1, 9, 21, generator=g)
    a, b = 1 / 0.3081, -0.1307 / 0.3081
    grid = (0.021, 20, 255)
    ref = small.conv_op(x * a + b, packed, 0.05, 100, in_grid=grid)
    got = small.conv_op(x, packed, 0.05, 100, in_grid=grid, in_affine=(a, b))
    diff = (got.int_repr().int() - ref.int_repr().int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
    relu = small.conv_relu_op(x, packed, 0.05, 100, in_grid=grid, in_affine=(a, b))
    assert int(relu.int_repr().min()) >= 100
    with pytest.raises(ValueError, match="no input affine"):
        small.conv_op(_quantized(x, 0.01, 0), packed, 0.05, 100, in_affine=(a, b))
