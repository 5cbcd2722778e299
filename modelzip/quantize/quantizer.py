"""Quantizers as composable objects: every choice of the survey is one config field.

A quantizer maps each value ``x`` of a tensor to one of a few *levels* and stores the index of
that level (its *code*). The choices (Section IV of the seed survey):

* **formulation** -- ``heuristic``: the levels follow from the range of the data (min/max or a
  percentile), ``Q(x) = Δ·round(x/Δ)``; ``optimized``: the levels minimise ``‖X − Q(X)‖²``
  (a search over the clipping range for uniform and power-of-two levels, Lloyd–Max iterations
  for adaptive levels).
* **levels** -- ``uniform-symmetric`` (``Δ·k``, ``|k| ≤ 2^(b−1)−1``, so zero is exact and ``−q`` is
  representable; ``b = 1`` is the sign quantizer ``±α``), ``uniform-affine`` (``lo + Δ·k``,
  ``k = 0..2^b−1``), ``log2`` (``0, ±2^e`` over ``2^(b−1)−1`` consecutive exponents, the INQ rule
  ``e_max = floor(log2(4·max|x|/3))``), ``adaptive`` (``2^b`` levels placed by k-means).
* **rounding** -- ``nearest`` or ``stochastic`` (unbiased: the upper of the two neighbouring
  levels is drawn with probability equal to the relative distance from the lower one).
* **granularity** -- one set of levels per ``tensor``, per output ``channel`` (first dimension),
  or per ``group`` of ``group_size`` consecutive weights of a channel.

Uniform levels are stored as ``value = offset + scale·code`` per group; log2 and adaptive levels
as an explicit table ``levels[group, code]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch

from modelzip.core.errors import ConfigError
from modelzip.core.frozen import ConfigBase, check_range

__all__ = ["Quantized", "Quantizer", "QuantizerConfig", "quantize", "quantize_tensor"]

Levels = Literal["uniform-symmetric", "uniform-affine", "log2", "adaptive"]
#: Candidate clipping fractions of the range searched by the ``optimized`` formulation.
_CLIP_GRID = torch.linspace(0.2, 1.0, 41)
_LLOYD_ITERS = 30


@dataclasses.dataclass(frozen=True)
class QuantizerChoices:
    """The quantizer fields that :class:`QuantizerConfig` documents, declared once for it and for
    the methods' configs that describe a quantizer (each adds its granularities and may change
    the default ``bits``; list this class before the config's base so the fields follow
    ``select``)."""

    bits: int = 8
    levels: Levels = "uniform-symmetric"
    formulation: Literal["heuristic", "optimized"] = "heuristic"
    range: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.9
    rounding: Literal["nearest", "stochastic"] = "nearest"


@dataclasses.dataclass(frozen=True)
class QuantizerConfig(QuantizerChoices, ConfigBase):
    """How to quantize a tensor.

    Parameters
    ----------
    bits:
        Bits per code, 1-16 (log2 and adaptive levels: 1-8, their table has ``2^bits`` rows).
    levels:
        Distribution of the levels (see the module docstring).
    formulation:
        ``heuristic`` (levels from the range) or ``optimized`` (minimise the squared error).
    range:
        Heuristic range: ``minmax`` or ``percentile`` (of ``|x|``, or both tails when affine).
    percentile:
        The percentile for ``range="percentile"``, in (50, 100].
    rounding:
        ``nearest`` or ``stochastic`` (unbiased).
    granularity:
        ``tensor``, ``channel`` (dimension 0) or ``group``.
    group_size:
        Consecutive values of a channel sharing levels when ``granularity="group"``.
    """

    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int = 64

    def validate(self) -> None:
        check_range(self, "bits", 1, 16)
        check_range(self, "percentile", 50, 100, low_open=True)
        check_range(self, "group_size", 1)
        if self.levels in ("log2", "adaptive") and self.bits > 8:
            raise ConfigError(
                f"{type(self).__name__}.bits={self.bits} is out of range for levels="
                f"{self.levels!r} (a table of 2^bits levels per group); allowed [1, 8]"
            )

    @classmethod
    def of(cls, config: Any) -> QuantizerConfig:
        """The quantizer a method's config describes by the fields it shares with this class (the
        others default); a field out of range is reported under ``config``'s class name."""
        own = {f.name for f in dataclasses.fields(config)}
        shared = [f.name for f in dataclasses.fields(cls) if f.name in own]
        try:
            return cls(**{k: getattr(config, k) for k in shared})
        except ConfigError as e:
            raise ConfigError(str(e).replace(cls.__name__, type(config).__name__)) from None


@dataclasses.dataclass
class Quantized:
    """A quantized tensor: codes plus, per group, either ``offset + scale·code`` or a level table.

    ``codes`` has the tensor's shape (int64, in ``[0, n_levels)``). Groups are rows of the
    tensor reshaped as in :func:`group_rows`.
    """

    codes: torch.Tensor
    bits: int
    shape: tuple[int, ...]
    granularity: str
    group_size: int
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    levels: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        """The tensor of level values (float32)."""
        return dequantize_codes(
            self.codes, self.shape, self.granularity, self.group_size,
            self.scale, self.offset, self.levels,
        )  # fmt: skip


def group_rows(x: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """``x`` as rows ``(groups, n)``; a last partial group is padded by repeating its last value
    (which changes neither its range nor its nearest levels)."""
    if granularity == "tensor" or x.dim() == 0:
        return x.reshape(1, -1)
    rows = x.reshape(x.shape[0], -1)
    if granularity == "channel":
        return rows
    n = rows.shape[1]
    size = min(group_size, n)
    pad = (-n) % size
    if pad:
        rows = torch.cat([rows, rows[:, -1:].expand(-1, pad)], dim=1)
    return rows.reshape(-1, size)


def ungroup_rows(
    rows: torch.Tensor, shape: tuple[int, ...], granularity: str, group_size: int
) -> torch.Tensor:
    """Inverse of :func:`group_rows`."""
    numel = math.prod(shape)
    if granularity == "tensor" or len(shape) == 0:
        return rows.reshape(-1)[:numel].reshape(shape)
    channels = shape[0]
    return rows.reshape(channels, -1)[:, : numel // max(channels, 1)].reshape(shape)


def dequantize_codes(
    codes: torch.Tensor,
    shape: tuple[int, ...],
    granularity: str,
    group_size: int,
    scale: torch.Tensor | None,
    offset: torch.Tensor | None,
    levels: torch.Tensor | None,
) -> torch.Tensor:
    """Values of ``codes`` given per-group affine parameters or a per-group level table."""
    rows = group_rows(codes.reshape(shape), granularity, group_size).long()
    if levels is not None:
        values = torch.gather(levels.float(), 1, rows)
    else:
        assert scale is not None and offset is not None
        values = offset.float()[:, None] + scale.float()[:, None] * rows.float()
    return ungroup_rows(values, shape, granularity, group_size)


def _check_finite(x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ConfigError(f"quantize expects a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ConfigError("quantize got an empty tensor")
    if not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "Inf"
        raise ConfigError(f"quantize refuses a tensor containing {bad}")


def _uniform_params(
    rows: torch.Tensor, cfg: QuantizerConfig, clip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(scale, offset, qmax_code)`` per row for clipping fraction(s) ``clip`` (shape (G,))."""
    if cfg.levels == "uniform-symmetric":
        if cfg.range == "percentile" and cfg.formulation == "heuristic":
            amax = torch.quantile(rows.abs(), cfg.percentile / 100, dim=1)
        else:
            amax = rows.abs().amax(dim=1)
        if cfg.bits == 1:
            # Sign quantizer ±α: α = mean|x| is the closed-form minimiser of ‖x − α·sign(x)‖².
            alpha = rows.abs().mean(dim=1)
            alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
            return 2 * alpha, -alpha, 1
        qmax = 2 ** (cfg.bits - 1) - 1
        amax = amax * clip
        # Test the step, not the range: a denormal range divided by qmax underflows to a zero
        # step and 0/0 codes (found by tests/reliability).
        delta = amax / qmax
        delta = torch.where(delta > 0, delta, torch.ones_like(amax))
        return delta, -qmax * delta, 2 * qmax
    if cfg.range == "percentile" and cfg.formulation == "heuristic":
        q = torch.tensor([1 - cfg.percentile / 100, cfg.percentile / 100], device=rows.device)
        lo, hi = torch.quantile(rows, q, dim=1)
    else:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    mid = (lo + hi) / 2  # clip symmetrically about the centre of the range
    lo, hi = mid + (lo - mid) * clip, mid + (hi - mid) * clip
    qmax = 2**cfg.bits - 1
    delta = (hi - lo) / qmax
    delta = torch.where(delta > 0, delta, torch.ones_like(hi))  # see the symmetric case
    return delta, lo, qmax


def _round_uniform(
    rows: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, qmax: int,
    rounding: str, generator: torch.Generator | None,
) -> torch.Tensor:  # fmt: skip
    t = (rows - offset[:, None]) / scale[:, None]
    t = stochastic_round(t, generator) if rounding == "stochastic" else torch.round(t)
    return t.clamp(0, qmax).long()


def stochastic_round(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``t`` rounded up with probability equal to its distance from ``floor(t)``, else down, so
    that the rounding is unbiased (``E[round(t)] = t``)."""
    low = torch.floor(t)
    u = torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype)
    return low + (u < t - low).to(t.dtype)


def _nearest_in_table(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each row's sorted ``table`` (ties go down)."""
    mids = (table[:, 1:] + table[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), rows.contiguous(), right=False)


def _round_table(
    rows: torch.Tensor, table: torch.Tensor, rounding: str, generator: torch.Generator | None
) -> torch.Tensor:
    if rounding == "nearest" or table.shape[1] == 1:
        return _nearest_in_table(rows, table)
    n = table.shape[1]
    below = (torch.searchsorted(table.contiguous(), rows.contiguous(), right=True) - 1).clamp(
        0, n - 2
    )
    lo, hi = torch.gather(table, 1, below), torch.gather(table, 1, below + 1)
    width = hi - lo
    p_up = torch.where(width > 0, (rows - lo) / torch.where(width > 0, width, 1), 0).clamp(0, 1)
    u = torch.rand(rows.shape, generator=generator, device=rows.device, dtype=rows.dtype)
    return below + (u < p_up).long()


def log2_table(rows: torch.Tensor, bits: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted power-of-two levels per row: ``0, ±2^e`` for ``2^(bits−1)−1`` exponents below the
    INQ maximum ``e_max = floor(log2(4·max|x|/3))`` (``bits = 1``: ``±2^e_max``)."""
    amax = rows.abs().amax(dim=1)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    e_max = torch.floor(torch.log2(4 * safe / 3))
    if shift is not None:
        e_max = e_max + shift
    if bits == 1:
        p = torch.exp2(e_max)[:, None]
        return torch.cat([-p, p], dim=1)
    n = 2 ** (bits - 1) - 1
    exps = e_max[:, None] - torch.arange(n - 1, -1, -1, device=rows.device, dtype=rows.dtype)
    pos = torch.exp2(exps)
    zero = torch.zeros_like(pos[:, :1])
    return torch.cat([-pos.flip(1), zero, pos], dim=1)


def adaptive_table(rows: torch.Tensor, bits: int, optimized: bool) -> torch.Tensor:
    """``2^bits`` sorted levels per row: equal-mass quantiles (heuristic), refined by Lloyd–Max
    (k-means on the values) when ``optimized``."""
    k = 2**bits
    probs = (torch.arange(k, device=rows.device, dtype=rows.dtype) + 0.5) / k
    table = torch.quantile(rows, probs, dim=1).T.contiguous()
    if not optimized:
        return table
    for _ in range(_LLOYD_ITERS):
        idx = _nearest_in_table(rows, table)
        sums = torch.zeros_like(table).scatter_add_(1, idx, rows)
        counts = torch.zeros_like(table).scatter_add_(1, idx, torch.ones_like(rows))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), table)
        new, _ = torch.sort(new, dim=1)
        if torch.equal(new, table):
            break
        table = new
    return table


def _best_by_error(rows: torch.Tensor, candidates: list[torch.Tensor]) -> torch.Tensor:
    """Per row, the index of the candidate reconstruction with the smallest squared error."""
    errors = torch.stack([((rows - c) ** 2).sum(dim=1) for c in candidates])
    return errors.argmin(dim=0)


def quantize_tensor(
    x: torch.Tensor, cfg: QuantizerConfig, generator: torch.Generator | None = None
) -> Quantized:
    """Quantize ``x`` as ``cfg`` says; returns the codes and the levels they index.

    Raises :class:`~modelzip.core.errors.ConfigError` on NaN, Inf or an empty tensor.
    """
    _check_finite(x)
    shape = tuple(x.shape)
    rows = group_rows(x.detach().float(), cfg.granularity, cfg.group_size)
    g = rows.shape[0]
    result = Quantized(torch.empty(0), cfg.bits, shape, cfg.granularity, cfg.group_size)
    if cfg.levels.startswith("uniform"):
        ones = torch.ones(g, device=rows.device)
        if cfg.formulation == "optimized" and cfg.bits > 1:
            # Clipping-range search: min ‖X − Q(X)‖² over clipping fractions of the range.
            recon = []
            for c in _CLIP_GRID.tolist():
                s, o, q = _uniform_params(rows, cfg, ones * c)
                recon.append(
                    o[:, None] + s[:, None] * _round_uniform(rows, s, o, q, "nearest", None)
                )
            clip = _CLIP_GRID.to(rows.device)[_best_by_error(rows, recon)]
        else:
            clip = ones
        scale, offset, qmax = _uniform_params(rows, cfg, clip)
        codes = _round_uniform(rows, scale, offset, qmax, cfg.rounding, generator)
        result.scale, result.offset = scale, offset
    else:
        if cfg.levels == "log2":
            table = log2_table(rows, cfg.bits)
            if cfg.formulation == "optimized":
                shifts = [torch.full((g,), -float(s), device=rows.device) for s in range(4)]
                tables = [log2_table(rows, cfg.bits, s) for s in shifts]
                recon = [torch.gather(t, 1, _nearest_in_table(rows, t)) for t in tables]
                best = _best_by_error(rows, recon)
                table = torch.stack(tables)[best, torch.arange(g, device=rows.device)]
        else:
            table = adaptive_table(rows, cfg.bits, cfg.formulation == "optimized")
        codes = _round_table(rows, table, cfg.rounding, generator)
        result.levels = table
    result.codes = ungroup_rows(codes, shape, cfg.granularity, cfg.group_size)
    return result


def quantize(
    x: torch.Tensor, cfg: QuantizerConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, dequantized)`` of ``x``; the dequantized tensor has ``x``'s dtype and shape."""
    q = quantize_tensor(x, cfg, generator)
    return q.codes, q.dequantize().to(x.dtype)


class Quantizer:
    """Thin object over :func:`quantize`: ``Quantizer(bits=4, levels="log2")(x)``."""

    def __init__(self, config: QuantizerConfig | None = None, **fields: object) -> None:
        base = config or QuantizerConfig()
        self.config = base.replace(**fields) if fields else base

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return quantize(x, self.config, generator)[1]
