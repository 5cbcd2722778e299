"""Properties of every quantizer: idempotence, error bounds, unbiased stochastic rounding.

Each method of the ``quantize`` family must appear in at least one of the property tables below;
:func:`test_every_quantizer_has_a_property` fails, naming it, when a new one does not.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from weight_strategies import (
    PROFILE,
    compress_layer,
    conv_layers,
    dense_weight,
    linear_layers,
    methods_of,
    sample_for,
    weights,
)

from modelzip.core.errors import ConfigError
from modelzip.core.registry import get_method
from modelzip.quantize.fold import FoldBNConfig
from modelzip.quantize.quantizer import QuantizerConfig, quantize, quantize_tensor
from modelzip.quantize.schemes import multibit_bases
from modelzip.quantize.xnor import XNORNetConfig

#: Methods whose example, applied to its own dense result, changes nothing.
IDEMPOTENT = ("binary", "inq", "int8", "multibit", "qat", "quantize_weights", "ternary")
#: Methods checked by a property of their own below.
SPECIFIC = {
    "quantize_weights": "test_uniform_error_at_most_half_a_step, test_stochastic_rounding_unbiased",
    "int8": "test_int8_error_at_most_half_a_step",
    "multibit": "test_multibit_fit_never_worse_than_its_greedy_start",
    "inq": "test_inq_levels_are_powers_of_two",
    "binary": "test_binary_and_ternary_levels",
    "ternary": "test_binary_and_ternary_levels",
    "fold_bn": "test_fold_bn_keeps_outputs",
    "xnor_net": "test_xnor_net_multiplies_signs_by_alpha_and_the_input_scale",
}


def test_every_quantizer_has_a_property():
    missing = [m for m in methods_of("quantize") if m not in IDEMPOTENT and m not in SPECIFIC]
    assert not missing, f"quantizers without a property test in {__file__}: {missing}"


def _layers() -> st.SearchStrategy[nn.Module]:
    return st.one_of(linear_layers(), conv_layers())


@pytest.mark.parametrize("method", IDEMPOTENT)
@PROFILE
@given(layer=_layers())
def test_quantizing_a_quantized_weight_changes_nothing(method, layer):
    config = get_method(method).example
    once, _ = compress_layer(layer, config)
    if once is None:
        return
    dense = once.to_dense()
    twice, _ = compress_layer(copy.deepcopy(dense), config)
    assert twice is not None
    w1, w2 = dense.weight.detach(), dense_weight(twice)
    scale = w1.abs().max()
    # Levels are recomputed from the quantized weight: equal up to float32 rounding of the scale.
    assert (w1 - w2).abs().max() <= 1e-5 * scale + 1e-30


@st.composite
def _uniform_configs(draw: st.DrawFn) -> QuantizerConfig:
    return QuantizerConfig(
        bits=draw(st.integers(1, 8)),
        levels=draw(st.sampled_from(["uniform-symmetric", "uniform-affine"])),
        granularity=draw(st.sampled_from(["tensor", "channel", "group"])),
        group_size=draw(st.integers(1, 9)),
    )


@PROFILE
@given(data=st.data(), config=_uniform_configs())
def test_uniform_error_at_most_half_a_step(data, config):
    rows, cols = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 13))
    w = data.draw(weights((rows, cols)))
    q = quantize_tensor(w, config)
    deq = q.dequantize()
    assert q.codes.min() >= 0 and q.codes.max() < 2**config.bits
    if config.levels == "uniform-symmetric" and config.bits == 1:
        return  # the sign quantizer ±mean|w| is not a rounding; its levels are checked above
    step = _per_element(q.scale, w.shape, config)
    # Inside the (min-max) range nearest rounding errs by at most half a step.
    assert ((w - deq).abs() <= step * (0.5 + 1e-5) + 1e-37).all()
    again = quantize(deq, config)[1]
    # Up to a float32 rounding of the step, and of the values themselves (1e20 has ulp 8.8e12).
    ulp = 4 * torch.finfo(torch.float32).eps * deq.abs()
    assert ((again - deq).abs() <= step * 1e-5 + ulp + 1e-37).all()


def _per_element(scale: torch.Tensor, shape: tuple[int, ...], config: QuantizerConfig):
    from modelzip.quantize.quantizer import group_rows, ungroup_rows

    ones = group_rows(torch.ones(shape), config.granularity, config.group_size)
    return ungroup_rows(ones * scale[:, None], shape, config.granularity, config.group_size)


@PROFILE
@given(
    value=st.floats(-1.0, 1.0, allow_nan=False, width=32),
    bits=st.integers(2, 6),
    levels=st.sampled_from(["uniform-symmetric", "uniform-affine", "log2"]),
)
def test_stochastic_rounding_unbiased(value, bits, levels):
    draws = 4000
    # Each row holds the value between fixed end points, so every row has the same levels and
    # one call draws the rounding of ``value`` ``draws`` times.
    rows = torch.tensor([[-1.0, value, 1.0]]).repeat(draws, 1)
    config = QuantizerConfig(bits=bits, levels=levels, rounding="stochastic")
    deq = quantize(rows, config, torch.Generator().manual_seed(0))[1][:, 1].double()
    # The largest gap between neighbouring levels on [-1, 1] (log2: between 1/2 and 1, or
    # between 0 and 1 when 2 bits leave one exponent).
    gap = {
        "uniform-symmetric": 1 / (2 ** (bits - 1) - 1),
        "uniform-affine": 2 / (2**bits - 1),
        "log2": 1.0 if bits == 2 else 0.5,
    }[levels]
    # Draws are the two levels around the value (a value 1e-5 from a level may never be
    # rounded the other way in 4,000 draws), up to float32 slack.
    assert len(torch.unique(deq)) <= 2
    assert ((deq - value).abs() <= gap + 1e-6).all()
    # Bernoulli rounding between two levels: the mean is within 5 standard errors of ``value``,
    # a standard error being at most half the gap over sqrt(draws).
    bound = 5 * gap / 2 / math.sqrt(draws) + 1e-6
    assert abs(deq.mean().item() - value) <= bound


@PROFILE
@given(layer=_layers())
def test_int8_error_at_most_half_a_step(layer):
    new, _ = compress_layer(layer, get_method("int8").example)
    w = layer.weight.detach()
    rows = w.reshape(w.shape[0], -1)
    step = (rows.abs().amax(dim=1) / 127).reshape(-1, *([1] * (w.dim() - 1)))
    assert ((w - dense_weight(new)).abs() <= step * (0.5 + 1e-5) + 1e-37).all()


@PROFILE
@given(data=st.data(), bases=st.integers(1, 4))
def test_multibit_fit_never_worse_than_its_greedy_start(data, bases):
    w = data.draw(weights((data.draw(st.integers(1, 5)), data.draw(st.integers(1, 17)))))
    rows = w.reshape(w.shape[0], -1).double()

    def error(iterations: int) -> torch.Tensor:
        codes, levels, _ = multibit_bases(w, bases, per_channel=True, iterations=iterations)
        return ((rows - torch.gather(levels.double(), 1, codes)) ** 2).sum(dim=1)

    greedy, fitted = error(0), error(10)
    # float32 levels: equal errors may differ by rounding, relative to the rows' energy.
    assert (fitted <= greedy * (1 + 1e-4) + 1e-10 * (rows**2).sum(dim=1) + 1e-30).all()


@PROFILE
@given(layer=_layers())
def test_inq_levels_are_powers_of_two(layer):
    new, _ = compress_layer(layer, get_method("inq").example)
    w = dense_weight(new)
    nonzero = w[w != 0].abs().double()
    assert torch.equal(torch.exp2(torch.log2(nonzero).round()), nonzero)
    assert len(torch.unique(nonzero)) <= 2 ** (get_method("inq").example.bits - 1) - 1


@pytest.mark.parametrize("method", ["binary", "ternary"])
@PROFILE
@given(layer=_layers())
def test_binary_and_ternary_levels(method, layer):
    new, _ = compress_layer(layer, get_method(method).example)
    w = dense_weight(new)
    rows = w.reshape(w.shape[0], -1)
    for row in rows if get_method(method).example.per_channel else [w.reshape(-1)]:
        magnitudes = set(row.abs().unique().tolist()) - {0.0}
        assert len(magnitudes) <= 1  # ±α (and 0 for ternary), one α per row or tensor
        if method == "binary":
            assert (row != 0).all()


@PROFILE
@given(layer=_layers(), scale=st.booleans())
def test_xnor_net_multiplies_signs_by_alpha_and_the_input_scale(layer, scale):
    # keep_first_last off: the one-layer model's layer is both first and last.
    new, report = compress_layer(layer, XNORNetConfig(scale_activations=scale,
                                                      keep_first_last=False))  # fmt: skip
    if new is None:  # a sample without negative inputs: sign(x) would be constant
        assert "never negative" in report.skipped[0].reason
        return
    w = new.decoded_weight().detach()
    rows, latent = w.reshape(w.shape[0], -1), layer.weight.detach().reshape(w.shape[0], -1)
    alpha = latent.double().abs().mean(1).float()  # α = mean|W| per output row
    assert torch.equal(rows.abs(), alpha[:, None].expand_as(rows))
    # sign(0) = +1; the sign bit, not "< 0": where α underflows (a row of denormals) the
    # decoded weights are ±0.0 and keep their signs only there.
    assert torch.equal(torch.signbit(rows), latent < 0)
    x = sample_for(layer).double()
    sx, wd = torch.where(x < 0, -1.0, 1.0).double(), w.double()
    bias = None if layer.bias is None else layer.bias.detach().double()
    if isinstance(layer, nn.Conv2d):
        args = (layer.stride, layer.padding, layer.dilation)
        want, size = F.conv2d(sx, wd, None, *args), F.conv2d(sx.abs(), wd.abs(), None, *args)
        if scale:  # K: mean |x| over the C·kh·kw entries of each window (zero padding counts)
            cols = F.unfold(x.abs(), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            k = cols.mean(1).reshape(x.shape[0], 1, *want.shape[2:])
            want, size = want * k, size * k
        want = want if bias is None else want + bias.reshape(1, -1, 1, 1)
    else:
        beta = x.abs().mean(1, keepdim=True) if scale else 1.0  # β = mean|x| per input row
        want, size = F.linear(sx, wd) * beta, F.linear(sx.abs(), wd.abs()) * beta
        want = want if bias is None else want + bias
    with torch.no_grad():
        got = new(x.float()).double()
    # float32 rounding, relative to the terms summed (a sum of ±α may cancel to exactly 0)
    bias_size = 0.0 if bias is None else float(bias.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * (float(size.max()) + bias_size) + 1e-30


@PROFILE
@given(
    channels=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_fold_bn_keeps_outputs(channels, seed, scale):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, channels, 3), nn.BatchNorm2d(channels), nn.ReLU()).eval()
    bn = model[1]
    with torch.no_grad():
        model[0].weight.mul_(scale)
        bn.running_mean.uniform_(-1, 1, generator=g)
        bn.running_var.uniform_(0.1, 3, generator=g)
        bn.weight.uniform_(-2, 2, generator=g)
        bn.bias.uniform_(-1, 1, generator=g)
    import modelzip

    x = torch.randn(2, 3, 7, 7, generator=g)
    folded, report = modelzip.compress(model, FoldBNConfig(), sample=x, measure=False)
    assert report.layers
    with torch.inference_mode():
        want, got = model(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantizer_refuses_nan_inf_and_integers(bad):
    with pytest.raises(ConfigError, match=r"NaN|Inf"):
        quantize_tensor(torch.tensor([1.0, bad]), QuantizerConfig())
    with pytest.raises(ConfigError, match="floating-point"):
        quantize_tensor(torch.tensor([1, 2]), QuantizerConfig())
    with pytest.raises(ConfigError, match="empty"):
        quantize_tensor(torch.zeros(0), QuantizerConfig())
