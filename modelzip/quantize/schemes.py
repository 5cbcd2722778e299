"""The named quantization schemes of the seed survey, as plain functions on tensors.

Each returns the codes (non-negative integers) and the sorted level table per row, so that the
same storage (:class:`~modelzip.quantize.layers.QuantLinear`) holds them all. Rows are output
channels when ``per_channel`` else the whole tensor.

* Binary (BinaryConnect / BWN / XNOR-Net): ``W ≈ α·B``, ``B = sign(W)``; ``α = mean|W|`` solves
  ``min_α ‖W − αB‖²``. Stochastic: ``P(B = +1) = clip((1 + w)/2, 0, 1)``.
* Ternary (TWN, Li & Liu 2016): ``Δ = 0.7·E|W|``, ``α = mean_{|w|>Δ} |w|``, ``W ≈ α·T``,
  ``T ∈ {−1, 0, +1}``. Stochastic ternary (TernGrad): ``T = sign(w)·Bernoulli(|w|/max|W|)``.
  TTQ (Zhu et al. 2017): separate positive and negative scales ``W_p, W_n`` (learned in
  :mod:`modelzip.quantize.fake`; initialised here as the means of each side above the threshold).
* DoReFa-Net (Zhou et al. 2016): ``w' = tanh(w) / (2·max|tanh(W)|) + 1/2``,
  ``w_q = 2·round((2^k − 1)·w') / (2^k − 1) − 1``.
* Multi-bit binary bases (LQ-Nets, ABC-Net): ``min ‖W − Σ_j α_j B_j‖²`` over ``α ∈ R^M``,
  ``B_j ∈ {±1}^n``, by alternating least squares from the greedy residual start.
"""

from __future__ import annotations

import itertools

import torch

__all__ = [
    "binarize",
    "dorefa_weights",
    "multibit_bases",
    "stochastic_ternarize",
    "ternarize",
    "ternary_threshold",
]


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    w = w.detach().float()
    return w.reshape(w.shape[0], -1) if per_channel and w.dim() > 0 else w.reshape(1, -1)


def binarize(
    w: torch.Tensor,
    per_channel: bool = True,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``(rows, n)`` in {0: −α, 1: +α} and levels ``(rows, 2)``, ``α = mean|W|``.

    The stochastic rule draws ``+1`` with probability ``clip((1 + w/max|W|)/2, 0, 1)`` (the
    hard sigmoid of the seed, on weights scaled into [−1, 1] so that it is not a coin toss for
    small weights).
    """
    rows = _rows(w, per_channel)
    alpha = rows.abs().mean(dim=1)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    if stochastic:
        amax = rows.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
        p = ((1 + rows / amax) / 2).clamp(0, 1)
        u = torch.rand(rows.shape, generator=generator, device=rows.device)
        codes = (u < p).long()
    else:
        codes = (rows >= 0).long()  # sign(0) = +1: every weight gets one of the two levels
    return codes, torch.stack([-alpha, alpha], dim=1)


def ternary_threshold(rows: torch.Tensor, factor: float = 0.7) -> torch.Tensor:
    """TWN's threshold ``Δ = factor·E|W|`` per row (the approximation of the optimum for
    uniform or normal weights)."""
    return factor * rows.abs().mean(dim=1)


def ternarize(
    w: torch.Tensor, per_channel: bool = False, factor: float = 0.7, asymmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN codes {0: −α_n, 1: 0, 2: +α_p} and levels ``(rows, 3)``.

    ``α = mean of |w| over |w| > Δ`` (the closed-form optimum given the threshold); with
    ``asymmetric`` the two sides get their own means (TTQ's initial ``W_p``, ``W_n``).
    """
    rows = _rows(w, per_channel)
    delta = ternary_threshold(rows, factor)[:, None]
    pos, neg = rows > delta, rows < -delta
    big = pos | neg

    def _mean(mask: torch.Tensor) -> torch.Tensor:
        count = mask.sum(dim=1)
        total = (rows.abs() * mask).sum(dim=1)
        return torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total))

    if asymmetric:
        a_p, a_n = _mean(pos), _mean(neg)
    else:
        a_p = a_n = _mean(big)
    codes = torch.ones_like(rows, dtype=torch.long) + pos.long() - neg.long()
    return codes, torch.stack([-a_n, torch.zeros_like(a_p), a_p], dim=1)


def stochastic_ternarize(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """TernGrad: ``s·sign(x)·b``, ``b ~ Bernoulli(|x|/s)``, ``s = max|x|``; unbiased.

    Returns ``(ternary values in {−1, 0, 1} as int8, s)``.
    """
    x = x.detach().float()
    s = x.abs().max()
    if s == 0:
        return torch.zeros_like(x, dtype=torch.int8), s
    u = torch.rand(x.shape, generator=generator, device=x.device)
    t = torch.sign(x) * (u < x.abs() / s).float()
    return t.to(torch.int8), s


def dorefa_weights(
    w: torch.Tensor, bits: int, per_channel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoReFa-Net's k-bit weights, codes ``0..2^k−1`` and levels ``(rows, 2^k)``.

    DoReFa maps weights into [−1, 1]; a model quantized after training also needs the weights'
    magnitude, so the levels are scaled by the least-squares factor ``s = ⟨W, W_q⟩ / ⟨W_q, W_q⟩``
    (with ``k = 1``, DoReFa's ``sign(w)·E|w|``).
    """
    rows = _rows(w, per_channel)
    n = 2**bits - 1
    if bits == 1:
        codes, levels = binarize(w, per_channel)
        return codes, levels
    t = torch.tanh(rows)
    tmax = t.abs().amax(dim=1, keepdim=True)
    tmax = torch.where(tmax > 0, tmax, torch.ones_like(tmax))
    codes = torch.round((t / (2 * tmax) + 0.5) * n).long()
    unit = 2 * codes.float() / n - 1
    s = (rows * unit).sum(dim=1) / (unit * unit).sum(dim=1).clamp_min(1e-30)
    s = torch.where(s > 0, s, torch.ones_like(s))
    grid = 2 * torch.arange(n + 1, device=rows.device, dtype=torch.float32) / n - 1
    return codes, s[:, None] * grid[None, :]


def _combinations(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``2^M`` sign patterns ``(2^M, M)`` and their values per row ``(rows, 2^M)``."""
    m = alpha.shape[1]
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=m)), device=alpha.device)
    return signs, alpha @ signs.T


def _assign(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index into each row's (unsorted) ``values`` of the nearest one, for every entry."""
    ordered, order = torch.sort(values, dim=1)
    mids = (ordered[:, 1:] + ordered[:, :-1]) / 2
    return order.gather(1, torch.searchsorted(mids.contiguous(), rows.contiguous()))


def multibit_bases(
    w: torch.Tensor, num_bases: int, per_channel: bool = True, iterations: int = 20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``min ‖W − Σ_j α_j B_j‖²`` by alternating least squares (LQ-Nets / ABC-Net).

    Start from the greedy residual fit (``B_j = sign(r_{j−1})``, ``α_j = mean|r_{j−1}|``), then
    alternate: each weight takes the nearest of the ``2^M`` sums ``Σ ±α_j`` (optimal ``B`` given
    ``α``), and ``α`` solves the normal equations ``(BᵀB) α = Bᵀw`` (optimal ``α`` given ``B``).
    Neither step increases the error, so the fit is never worse than its greedy start. More
    bases usually fit better but not always: ALS stops in a local optimum (Hypothesis found a
    3 x 11 matrix that 3 bases fit better than 4; tests/reliability).

    Returns
    -------
    codes, levels, alpha:
        Codes ``(rows, n)`` into the sorted level table ``(rows, 2^M)``, and ``α`` ``(rows, M)``.
    """
    rows = _rows(w, per_channel)
    residual = rows.clone()
    alphas = []
    for _ in range(num_bases):
        a = residual.abs().mean(dim=1)
        alphas.append(a)
        residual = residual - a[:, None] * torch.where(residual >= 0, 1.0, -1.0)
    alpha = torch.stack(alphas, dim=1)
    signs, values = _combinations(alpha)
    idx = _assign(rows, values)
    err = ((rows - torch.gather(values, 1, idx)) ** 2).sum(dim=1)
    eye = 1e-6 * torch.eye(num_bases, device=rows.device)
    for _ in range(iterations):
        b = signs[idx]  # (rows, n, M)
        gram = b.transpose(1, 2) @ b + eye
        # pinv, not solve: equal sign columns (e.g. a constant row) make the Gram matrix
        # singular in float32 despite the ridge (found by tests/reliability).
        new_alpha = (
            torch.linalg.pinv(gram, hermitian=True) @ (b.transpose(1, 2) @ rows[:, :, None])
        )[..., 0]
        new_values = new_alpha @ signs.T
        new_idx = _assign(rows, new_values)
        new_err = ((rows - torch.gather(new_values, 1, new_idx)) ** 2).sum(dim=1)
        better = new_err < err * (1 - 1e-7)
        if not better.any():
            break
        alpha = torch.where(better[:, None], new_alpha, alpha)
        idx = torch.where(better[:, None], new_idx, idx)
        err = torch.where(better, new_err, err)
    values = alpha @ signs.T
    levels, order = torch.sort(values, dim=1)
    codes = torch.argsort(order, dim=1).gather(1, idx)
    return codes, levels, alpha
