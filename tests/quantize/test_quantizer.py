"""Quantizer objects: error bounds, unbiasedness, level distributions and edge inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from modelzip.core.errors import ConfigError
from modelzip.quantize.quantizer import Quantizer, QuantizerConfig, quantize, quantize_tensor

LEVELS = ("uniform-symmetric", "uniform-affine", "log2", "adaptive")


@pytest.mark.parametrize("levels", ["uniform-symmetric", "uniform-affine"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_nearest_error_at_most_half_step(levels, granularity, bits):
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(bits))
    cfg = QuantizerConfig(bits=bits, levels=levels, granularity=granularity, group_size=16)
    q = quantize_tensor(x, cfg)
    assert q.scale is not None
    # Per-value step of its group, laid out like x.
    from modelzip.quantize.quantizer import group_rows, ungroup_rows

    steps = group_rows(torch.zeros_like(x), granularity, 16) + q.scale[:, None]
    steps = ungroup_rows(steps, tuple(x.shape), granularity, 16)
    assert ((x - q.dequantize()).abs() <= steps / 2 + 1e-6).all()


@pytest.mark.parametrize("levels", LEVELS)
def test_stochastic_rounding_is_unbiased(levels):
    # Values strictly inside the range: the mean of many draws converges to x.
    x = torch.linspace(-0.9, 0.9, 37)
    x = torch.cat([x, torch.tensor([-1.0, 1.0])])
    cfg = QuantizerConfig(bits=3, levels=levels, rounding="stochastic", granularity="tensor")
    q = quantize_tensor(x, cfg)
    inside = torch.ones_like(x, dtype=torch.bool)
    if q.levels is not None:  # unbiased between the outer levels (beyond them: clipped)
        inside = (x >= q.levels.min()) & (x <= q.levels.max())
    g = torch.Generator().manual_seed(0)
    draws = 4000
    # Repeating x leaves its range and quantiles (so the levels) unchanged: one call, many draws.
    mean = quantize(x.repeat(draws), cfg, g)[1].reshape(draws, -1).mean(0)
    # Each draw is within one step of x: bound the mean's error by 5 standard errors.
    table = q.levels if q.levels is not None else None
    step = (table[0, 1:] - table[0, :-1]).max() if table is not None else q.scale.max()
    assert inside.sum() >= 20
    assert (mean - x)[inside].abs().max() <= 5 * step / 2 / draws**0.5 + 1e-6


def test_log2_levels_are_powers_of_two():
    x = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    for bits, formulation in itertools.product((1, 2, 3, 4), ("heuristic", "optimized")):
        cfg = QuantizerConfig(bits=bits, levels="log2", formulation=formulation)
        values = quantize(x, cfg)[1]
        nonzero = values[values != 0].abs()
        assert torch.equal(torch.exp2(torch.round(torch.log2(nonzero))), nonzero)
        assert quantize(x, cfg)[0].max() < 2**bits
    # INQ's largest exponent: floor(log2(4/3 · max|x|)).
    q = quantize_tensor(
        torch.tensor([0.3, -0.05, 0.01]),
        QuantizerConfig(bits=3, levels="log2", granularity="tensor"),
    )
    assert q.levels is not None and q.levels.max() == 0.25


@pytest.mark.parametrize("levels", LEVELS)
def test_optimized_no_worse_than_heuristic(levels):
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(2)) ** 3  # heavy tails
    errors = {}
    for formulation in ("heuristic", "optimized"):
        cfg = QuantizerConfig(bits=3, levels=levels, formulation=formulation)
        errors[formulation] = float(((x - quantize(x, cfg)[1]) ** 2).sum())
    assert errors["optimized"] <= errors["heuristic"] * (1 + 1e-6)


def test_adaptive_levels_are_kmeans_fixed_point():
    x = torch.randn(1, 300, generator=torch.Generator().manual_seed(3))
    q = quantize_tensor(x, QuantizerConfig(bits=2, levels="adaptive", formulation="optimized"))
    assert q.levels is not None
    for k in range(4):
        members = x[q.codes == k]
        if len(members):
            torch.testing.assert_close(members.mean(), q.levels[0, k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize(
    "x",
    [torch.zeros(3, 4), torch.full((3, 4), 0.25), torch.tensor([0.7]), torch.tensor(1.5)],
    ids=["zeros", "constant", "single", "scalar"],
)
def test_edge_inputs(levels, x):
    for granularity in ("tensor", "channel", "group"):
        cfg = QuantizerConfig(bits=4, levels=levels, granularity=granularity, group_size=3)
        codes, values = quantize(x, cfg)
        assert values.shape == x.shape and codes.shape == x.shape
        assert torch.isfinite(values).all()
        if levels != "log2" or bool((x == 0).all()) or float(x.reshape(-1)[0]) == 0.25:
            torch.testing.assert_close(values, x)  # zeros and constants are representable


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_refused(bad):
    x = torch.tensor([0.0, 1.0, bad])
    with pytest.raises(ConfigError, match=r"NaN|Inf"):
        quantize(x, QuantizerConfig())
    with pytest.raises(ConfigError, match="empty"):
        quantize(torch.zeros(0), QuantizerConfig())


def test_config_validation_names_field_and_range():
    with pytest.raises(ConfigError, match=r"bits=17.*\[1, 16\]"):
        QuantizerConfig(bits=17)
    with pytest.raises(ConfigError, match=r"bits=9.*log2"):
        QuantizerConfig(bits=9, levels="log2")
    with pytest.raises(ConfigError, match="levels"):
        QuantizerConfig(levels="cubic")  # type: ignore[arg-type]
    assert QuantizerConfig.from_dict(QuantizerConfig(bits=3).to_dict()) == QuantizerConfig(bits=3)


def test_quantizer_class_matches_function():
    x = torch.randn(5, 6)
    cfg = QuantizerConfig(bits=3, levels="uniform-affine")
    torch.testing.assert_close(Quantizer(cfg)(x), quantize(x, cfg)[1])
    torch.testing.assert_close(Quantizer(bits=3, levels="uniform-affine")(x), quantize(x, cfg)[1])
