"""Activation observers for post-training quantization, and PACT's learned clipping for training.

An observer watches a layer's inputs on calibration batches and then proposes the clipping
range ``[lo, hi]`` of their 8-bit (or k-bit) quantization:

* ``minmax`` -- the extremes seen (no clipping error, the widest step);
* ``percentile`` -- the ``p``-th percentile of the values seen (ignores rare outliers);
* ``mse`` -- the range minimising ``‖X − Q(X)‖²`` over shrunken ranges (the optimization
  formulation applied to activations).

PACT (Choi et al. 2018) learns the clip ``α`` of ``y = clip(x, 0, α)`` by gradient descent; the
gradient of ``α`` is ``∂L/∂y`` where ``x ≥ α``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from modelzip.core.errors import ConfigError

__all__ = ["PACT", "Observer", "fake_quantize_affine"]

ObserverKind = Literal["minmax", "percentile", "mse"]
#: Values kept per observer for percentile and MSE searches (a random subsample beyond that).
_KEEP = 200_000


def fake_quantize_affine(
    x: torch.Tensor, lo: float | torch.Tensor, hi: float | torch.Tensor, bits: int
) -> torch.Tensor:
    """``x`` clipped to ``[lo, hi]`` and rounded to ``2^bits`` uniform levels (in float)."""
    n = 2**bits - 1
    scale = torch.clamp((torch.as_tensor(hi) - torch.as_tensor(lo)) / n, min=1e-12)
    q = torch.round((torch.clamp(x, lo, hi) - lo) / scale)
    return q * scale + lo


class Observer:
    """Collects activation statistics and proposes a quantization range.

    >>> obs = Observer("percentile", bits=8, percentile=99.99)
    >>> obs.observe(torch.randn(100)); lo, hi = obs.range()
    """

    def __init__(self, kind: ObserverKind = "minmax", bits: int = 8, percentile: float = 99.99):
        if kind not in ("minmax", "percentile", "mse"):
            raise ConfigError(f"observer={kind!r} is not allowed; choose minmax, percentile, mse")
        self.kind, self.bits, self.percentile = kind, bits, percentile
        self.lo, self.hi = float("inf"), float("-inf")
        self._values: list[torch.Tensor] = []
        self._seen = 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if not torch.isfinite(x).all():
            raise ConfigError("an observed activation contains NaN or Inf")
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if self.kind != "minmax":
            if x.numel() > _KEEP:  # a fixed-seed subsample keeps memory bounded
                g = torch.Generator().manual_seed(self._seen)
                x = x.cpu()[torch.randperm(x.numel(), generator=g)[:_KEEP]]
            self._values.append(x.cpu())
            self._seen += 1

    def range(self) -> tuple[float, float]:
        """``(lo, hi)``, always containing 0 (so zero padding and ReLU zeros are exact)."""
        if self.lo > self.hi:
            raise ConfigError("the observer saw no data; calibrate with at least one batch")
        lo, hi = self.lo, self.hi
        if self.kind != "minmax":
            v = torch.cat(self._values)
            if v.numel() > _KEEP:
                v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:_KEEP]]
            if self.kind == "percentile":
                p = self.percentile / 100
                lo, hi = float(torch.quantile(v, 1 - p)), float(torch.quantile(v, p))
            else:
                best = float("inf")
                for c in torch.linspace(0.3, 1.0, 36).tolist():
                    err = float(
                        ((v - fake_quantize_affine(v, lo * c, hi * c, self.bits)) ** 2).sum()
                    )
                    if err < best:
                        best, b_lo, b_hi = err, self.lo * c, self.hi * c
                lo, hi = b_lo, b_hi
        return min(lo, 0.0), max(hi, 0.0)


class _PACTFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        y = torch.clamp(x, min=0)
        y = torch.minimum(y, alpha)
        n = 2**bits - 1
        return torch.round(y * n / alpha) * alpha / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        inside = (x >= 0) & (x < alpha)
        grad_alpha = (grad * (x >= alpha)).sum().reshape(alpha.shape)
        return grad * inside, grad_alpha, None


class PACT(nn.Module):
    """``round(clip(x, 0, α)·(2^k−1)/α)·α/(2^k−1)`` with a learned clip ``α`` (straight-through
    estimator for the rounding)."""

    def __init__(self, bits: int = 4, alpha: float = 6.0) -> None:
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PACTFunction.apply(x, self.alpha.abs() + 1e-6, self.bits)
