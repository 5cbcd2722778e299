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

For these two, ``margin = 1`` uses the full bound, so no output that the ReLU would pass is ever
skipped (exact, up to float rounding); a margin below 1 skips more at the risk of *false skips*.
Two further predictors are not exact at any setting and are judged by their false skips:

* **neighbour** (conv only; spatial correlation of ReLU outputs, Shomron & Weiser, "Spatial
  correlation and value prediction in convolutional neural networks", IEEE CAL 2019, and the
  precheck of Mosaic / SnaPEA-like designs): the outputs on a grid of every ``stride_check``-th
  pixel are computed exactly (never skipped); any other pixel is skipped when every grid pixel of
  its enclosing grid cell is ``≤ -margin·σ``, ``σ`` the standard deviation of that sample's
  grid outputs in the channel (see :func:`neighbour_skip_mask`);
* **lsh** (linear only; Spring & Shrivastava, "Scalable and sustainable deep learning via
  randomized hashing", KDD 2017): SimHash (signed random projections, ``n_bits`` bits in each
  of ``n_tables`` tables) of the rows ``[w_o, b_o]`` and of the input ``[x, 1]``, so that
  ``w_o·x + b_o`` is an inner product; only the neurons whose code equals the input's in at
  least one table (the active set) are computed, the others are predicted 0
  (see :func:`lsh_skip_mask`). ``margin`` plays no part.

The layer here simulates the skip (it computes everything and zeroes the skipped outputs) and
counts the full-precision MACs a skipping kernel would avoid.

The backward pass: :class:`TopKGrad` keeps only the ``k`` largest-magnitude entries of each
sample's output gradient (meProp, Sun et al., ICML 2017), so the preceding linear layer's
backward products touch ``k`` of its ``out`` rows; :func:`meprop_backward_macs` counts them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Estimate = Literal["low_precision", "low_rank", "neighbour", "lsh"]
ESTIMATES: tuple[str, ...] = ("low_precision", "low_rank", "neighbour", "lsh")
# The layer types an estimate applies to; attach_predictors leaves the others alone.
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "low_precision": (nn.Conv2d, nn.Linear),
    "low_rank": (nn.Conv2d, nn.Linear),
    "neighbour": (nn.Conv2d,),
    "lsh": (nn.Linear,),
}


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


def neighbour_skip_mask(
    y: torch.Tensor, stride_check: int = 2, margin: float = 0.0
) -> torch.Tensor:
    """Which conv outputs ``y`` (``N, C, H, W``) the neighbour precheck skips.

    The grid is the pixels ``(i, j)`` with ``i`` and ``j`` multiples of ``s = stride_check``;
    they are computed exactly and never skipped. The neighbours of another pixel are the grid
    pixels less than ``s`` away in both dimensions that lie inside the map: the 4 corners of its
    enclosing grid cell, or the 2 ends of the cell edge it lies on when one of its coordinates is
    a multiple of ``s`` (fewer past the last grid row or column). It is skipped when all of them
    are ``≤ -margin·σ``, with ``σ`` the standard deviation of the sample's grid outputs in that
    channel (per sample, so that a prediction does not depend on the rest of the batch); margin 0
    skips when all neighbours are ``≤ 0``, a larger margin asks for clearer negatives.
    """
    if stride_check < 1:
        raise ValueError(f"stride_check={stride_check!r} is out of range; allowed [1, inf)")
    grid = y[:, :, ::stride_check, ::stride_check]
    sigma = grid.flatten(2).std(-1, correction=0)[..., None, None]

    def cell(size: int, n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(size, device=y.device)
        return i // stride_check, (-(-i // stride_check)).clamp_max(n_grid - 1)

    (top, bottom), (left, right) = cell(y.shape[2], grid.shape[2]), cell(y.shape[3], grid.shape[3])
    rows = torch.maximum(grid[:, :, top], grid[:, :, bottom])
    highest = torch.maximum(rows[..., left], rows[..., right])
    skip = highest <= -margin * sigma
    skip[:, :, ::stride_check, ::stride_check] = False
    return skip


def simhash_codes(v: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """SimHash of the rows of ``v`` (``M, d``) in each of the ``T`` tables of ``projections``
    (``T, B, d``): the ``B`` signs of ``v·r`` packed into one integer per table, shape ``M, T``."""
    bits = torch.einsum("md,tbd->mtb", v, projections) > 0
    weights = 2 ** torch.arange(projections.shape[1], device=v.device)
    return (bits.long() * weights).sum(-1)


def lsh_skip_mask(
    x: torch.Tensor, projections: torch.Tensor, weight_codes: torch.Tensor
) -> torch.Tensor:
    """Which outputs of a linear layer the hashing search skips: those whose row's codes
    ``weight_codes`` (``out, T``) differ from the input ``[x, 1]``'s in every table. Returns a
    mask of shape ``(*x.shape[:-1], out)``."""
    flat = x.reshape(-1, x.shape[-1])
    augmented = torch.cat([flat, torch.ones_like(flat[:, :1])], 1)
    codes = simhash_codes(augmented, projections)
    active = (codes[:, None, :] == weight_codes[None]).any(-1)
    return ~active.reshape(*x.shape[:-1], -1)


class PredictedReLULayer(nn.Module):
    """A conv/linear (+ folded BN) whose ReLU-zeroed outputs are predicted and skipped.

    Outputs the pre-activation with skipped entries set to 0 (the ReLU that follows then gives
    0 for them) and accumulates ``outputs``, ``skipped``, ``false_skips`` (skipped outputs that
    were > 0), ``macs_total``, ``macs_skipped`` (``skipped · fan_in``) and ``predictor_macs``.

    Parameters
    ----------
    estimate
        ``"low_precision"`` (uses ``bits``), ``"low_rank"`` (``rank``), ``"neighbour"`` (Conv2d
        only; ``stride_check``) or ``"lsh"`` (Linear only; ``n_tables``, ``n_bits``, ``seed``).
    margin
        low_precision, low_rank: the multiple of the error bound added to the estimate (1 is
        exact). neighbour: grid neighbours must be ``≤ -margin·σ`` (in units of the channel's
        grid-output standard deviation) for a pixel to be skipped. lsh: unused.
    """

    def __init__(
        self,
        layer: nn.Module,
        bn: nn.Module | None = None,
        estimate: Estimate = "low_precision",
        bits: int = 4,
        rank: int = 4,
        margin: float = 1.0,
        stride_check: int = 2,
        n_tables: int = 8,
        n_bits: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate={estimate!r} is not known; allowed {ESTIMATES}")
        if not isinstance(layer, LAYER_TYPES[estimate]):
            allowed = " or ".join(t.__name__ for t in LAYER_TYPES[estimate])
            raise ValueError(
                f"estimate={estimate!r} needs a {allowed} layer, got {type(layer).__name__}"
            )
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
        elif estimate == "low_rank":
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            r = min(rank, len(s))
            self.register_buffer("u", u[:, :r] * s[:r])
            self.register_buffer("v", vh[:r])
            self.register_buffer("res_norm", (mat - self.u @ self.v).norm(dim=1))
        elif estimate == "neighbour":
            if stride_check < 1:
                raise ValueError(f"stride_check={stride_check!r} is out of range; allowed [1, inf)")
            self.stride_check = stride_check
        else:
            self._init_lsh(mat, b, n_tables, n_bits, seed)
        self.reset_stats()

    def _init_lsh(
        self, mat: torch.Tensor, b: torch.Tensor, n_tables: int, n_bits: int, seed: int
    ) -> None:
        if n_tables < 1:
            raise ValueError(f"n_tables={n_tables!r} is out of range; allowed [1, inf)")
        if not 1 <= n_bits <= 62:  # the codes are packed into int64
            raise ValueError(f"n_bits={n_bits!r} is out of range; allowed [1, 62]")
        g = torch.Generator().manual_seed(seed)
        projections = torch.randn(n_tables, n_bits, mat.shape[1] + 1, generator=g)
        projections = projections.to(mat.device, mat.dtype)
        self.register_buffer("projections", projections)
        self.register_buffer(
            "weight_codes", simhash_codes(torch.cat([mat, b[:, None]], 1), projections)
        )

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

    def _bounded_skip(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Skip mask and predictor MACs of the low-precision and low-rank estimates."""
        shape = (1, -1, 1, 1) if self.conv else (1, -1)
        if self.estimate == "low_precision":
            x_q, x_step = _quantize(x, self.bits)
            estimate = self._apply(x_q, self.w_q, self.b)
            bound = x_step / 2 * self.w_l1.reshape(shape) + self.w_step.reshape(
                shape
            ) / 2 * self._field_sum(x_q.abs())
            per_output = self.fan_in
        else:
            r = self.v.shape[0]
            if self.conv:
                vx = self._apply(x, self.v.reshape(r, *self.w.shape[1:]), None)
                estimate = torch.einsum("or,nrhw->nohw", self.u, vx) + self.b.reshape(shape)
            else:
                estimate = x @ self.v.t() @ self.u.t() + self.b
            bound = self.res_norm.reshape(shape) * self._field_sum(x * x).sqrt()
            per_output = r
        return estimate + self.margin * bound <= 0, estimate.numel() * per_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._apply(x, self.w, self.b)
        if self.estimate == "neighbour":
            skip = neighbour_skip_mask(y, self.stride_check, self.margin)
            grid = y[:, :, :: self.stride_check, :: self.stride_check]
            # The grid outputs are needed anyway, so they are computed, not extra work.
            predictor_macs = grid.numel() * self.fan_in
        elif self.estimate == "lsh":
            skip = lsh_skip_mask(x, self.projections, self.weight_codes)
            n_tables, n_bits = self.projections.shape[:2]
            predictor_macs = x[..., 0].numel() * n_tables * n_bits * self.fan_in
        else:
            skip, predictor_macs = self._bounded_skip(x)
        n_skipped = int(skip.sum())
        self.outputs += y.numel()
        self.skipped += n_skipped
        self.false_skips += int((skip & (y > 0)).sum())
        self.macs_total += y.numel() * self.fan_in
        self.macs_skipped += n_skipped * self.fan_in
        self.predictor_macs += predictor_macs
        return y.masked_fill(skip, 0.0)


def attach_predictors(
    model: nn.Sequential, estimate: Estimate = "low_precision", **kwargs: Any
) -> dict[str, PredictedReLULayer]:
    """Replace every ``conv/linear [→ BatchNorm] → ReLU`` run of a Sequential model in place
    (the BatchNorm becomes an Identity, folded into the predictor). Returns the new layers.

    Layers the estimate does not apply to (Linear for ``"neighbour"``, Conv2d for ``"lsh"``)
    are left as they are; ``kwargs`` go to :class:`PredictedReLULayer`."""
    names = list(model._modules)
    found = {}
    for i, name in enumerate(names):
        layer = model._modules[name]
        if not isinstance(layer, LAYER_TYPES.get(estimate, (nn.Conv2d, nn.Linear))):
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
