"""Before-calculation neuron pruning: predict which outputs a ReLU will zero, skip computing them.

For a conv or linear layer followed (through an optional BatchNorm, folded in) by a ReLU, an
output ``y = w·x + b`` is skipped when a cheap estimate ``ŷ`` plus a margin says ``y ≤ 0``:

* **low precision** (after SnaPEA, Akhlaghi et al., ISCA 2018, and predictive ReLU units): ``x``
  and ``w`` quantized to ``bits`` bits (steps ``Δx``, ``Δw_o``) give ``ŷ = w_q·x_q + b`` with
  ``|y - ŷ| ≤ Δx/2·‖w_o‖₁ + Δw_o/2·Σ|x_q|`` over the receptive field, a bound that costs one
  single-channel box filter;
* **low rank** (dimension reduction, as in Davis & Arel's low-rank approximations and
  random-projection predictors): ``W ≈ U V`` of rank ``r`` gives ``ŷ = U(Vx) + b`` with
  ``|y - ŷ| ≤ ‖(W - UV)_o‖₂ · ‖x‖₂`` (Cauchy–Schwarz) over the receptive field.

``margin = 1`` uses the full bound, so no output that the ReLU would pass is ever skipped (exact,
up to float rounding); a margin below 1 skips more at the risk of *false skips*. The layer here
simulates the skip (it computes everything and zeroes the skipped outputs) and counts the
full-precision MACs a skipping kernel would avoid.

The backward pass: :class:`TopKGrad` keeps only the ``k`` largest-magnitude entries of each
sample's output gradient (meProp, Sun et al., ICML 2017), so the preceding linear layer's
backward products touch ``k`` of its ``out`` rows; :func:`meprop_backward_macs` counts them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Estimate = Literal["low_precision", "low_rank"]


def _fold_bn(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], device=w.device)
    if bn is None:
        return w, b
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return w * scale.reshape(shape), (b - bn.running_mean) * scale + bn.bias.detach()


def _quantize(t: torch.Tensor, bits: int, dim: int | None = None) -> tuple[torch.Tensor, Any]:
    """Symmetric uniform quantization (per row when ``dim`` is given); returns (value, step)."""
    if dim is None:
        step = t.abs().max().clamp_min(1e-12) / (2 ** (bits - 1) - 1)
    else:
        step = t.abs().flatten(1).amax(1).clamp_min(1e-12) / (2 ** (bits - 1) - 1)
        step = step.reshape((-1,) + (1,) * (t.dim() - 1))
    return torch.round(t / step) * step, step


class PredictedReLULayer(nn.Module):
    """A conv/linear (+ folded BN) whose ReLU-zeroed outputs are predicted and skipped.

    Outputs the pre-activation with skipped entries set to 0 (the ReLU that follows then gives
    0 for them) and accumulates ``outputs``, ``skipped``, ``false_skips`` and ``macs_skipped``.
    """

    def __init__(
        self,
        layer: nn.Module,
        bn: nn.Module | None = None,
        estimate: Estimate = "low_precision",
        bits: int = 4,
        rank: int = 4,
        margin: float = 1.0,
    ) -> None:
        super().__init__()
        self.layer, self.estimate, self.bits, self.margin = layer, estimate, bits, margin
        w, b = _fold_bn(layer, bn)
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.conv = isinstance(layer, nn.Conv2d)
        mat = w.reshape(w.shape[0], -1)
        self.fan_in = mat.shape[1]
        if estimate == "low_precision":
            w_q, step = _quantize(w, bits, dim=0)
            self.register_buffer("w_q", w_q)
            self.register_buffer("w_step", step.reshape(-1))
            self.register_buffer("w_l1", mat.abs().sum(1))
        else:
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            r = min(rank, len(s))
            self.register_buffer("u", u[:, :r] * s[:r])
            self.register_buffer("v", vh[:r])
            self.register_buffer("res_norm", (mat - self.u @ self.v).norm(dim=1))
        self.reset_stats()

    def reset_stats(self) -> None:
        self.outputs = self.skipped = self.false_skips = 0
        self.macs_total = self.macs_skipped = self.predictor_macs = 0

    def _apply(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.conv:
            c = self.layer
            return F.conv2d(x, w, bias, c.stride, c.padding, c.dilation, c.groups)
        return F.linear(x, w.reshape(w.shape[0], -1), bias)

    def _field_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over each output's receptive field (a box filter over all channels)."""
        if not self.conv:
            return t.sum(-1, keepdim=True)
        ones = torch.ones((1, *self.w.shape[1:]), device=t.device, dtype=t.dtype)
        c = self.layer
        return F.conv2d(t, ones, None, c.stride, c.padding, c.dilation, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._apply(x, self.w, self.b)
        shape = (1, -1, 1, 1) if self.conv else (1, -1)
        if self.estimate == "low_precision":
            x_q, x_step = _quantize(x, self.bits)
            estimate = self._apply(x_q, self.w_q, self.b)
            bound = x_step / 2 * self.w_l1.reshape(shape) + self.w_step.reshape(
                shape
            ) / 2 * self._field_sum(x_q.abs())
        else:
            r = self.v.shape[0]
            if self.conv:
                vx = self._apply(x, self.v.reshape(r, *self.w.shape[1:]), None)
                estimate = torch.einsum("or,nrhw->nohw", self.u, vx) + self.b.reshape(shape)
            else:
                estimate = x @ self.v.t() @ self.u.t() + self.b
            bound = self.res_norm.reshape(shape) * self._field_sum(x * x).sqrt()
        skip = estimate + self.margin * bound <= 0
        self.outputs += y.numel()
        self.skipped += int(skip.sum())
        self.false_skips += int((skip & (y > 0)).sum())
        self.macs_total += y.numel() * self.fan_in
        self.macs_skipped += int(skip.sum()) * self.fan_in
        self.predictor_macs += y.numel() * (
            self.fan_in if self.estimate == "low_precision" else self.v.shape[0]
        )
        return y.masked_fill(skip, 0.0)


def attach_predictors(
    model: nn.Sequential, estimate: Estimate = "low_precision", **kwargs: Any
) -> dict[str, PredictedReLULayer]:
    """Replace every ``conv/linear [→ BatchNorm] → ReLU`` run of a Sequential model in place
    (the BatchNorm becomes an Identity, folded into the predictor). Returns the new layers."""
    names = list(model._modules)
    found = {}
    for i, name in enumerate(names):
        layer = model._modules[name]
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        nxt = [model._modules[n] for n in names[i + 1 : i + 3]]
        bn = nxt[0] if nxt and isinstance(nxt[0], (nn.BatchNorm1d, nn.BatchNorm2d)) else None
        relu = nxt[1 if bn is not None else 0] if len(nxt) > (1 if bn is not None else 0) else None
        if not isinstance(relu, nn.ReLU):
            continue
        found[name] = PredictedReLULayer(layer, bn, estimate, **kwargs)
        model._modules[name] = found[name]
        if bn is not None:
            model._modules[names[i + 1]] = nn.Identity()
    return found


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, k: int) -> torch.Tensor:
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        flat = grad.reshape(grad.shape[0], -1)
        if ctx.k >= flat.shape[1]:
            return grad, None
        idx = flat.abs().topk(ctx.k, dim=1).indices
        sparse = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx))
        return sparse.reshape(grad.shape), None


class TopKGrad(nn.Module):
    """Identity forward; backward keeps each sample's ``k`` largest output-gradient entries
    (meProp). Put it right after a linear layer."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k={k!r} is out of range; allowed [1, inf)")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TopK.apply(x, self.k) if torch.is_grad_enabled() else x


def meprop_backward_macs(in_features: int, out_features: int, k: int, batch: int) -> dict:
    """Backward MACs of one linear layer: ``∂x = δ W`` and ``∂W = δᵀ x`` each cost
    ``batch·in·out`` dense, ``batch·in·k`` with ``k`` nonzeros per row of ``δ``."""
    dense = 2 * batch * in_features * out_features
    sparse = 2 * batch * in_features * min(k, out_features)
    return {"dense": dense, "sparse": sparse, "saved_fraction": 1 - sparse / dense}
