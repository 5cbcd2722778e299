"""Rank selection: exact ranks, a fraction of the parameters, an energy threshold, and VBMF.

Every rule returns plain integers; the layers only ever see exact ranks. The global-budget
allocation over a whole model lives in :mod:`modelzip.decompose.budget`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from modelzip.core.errors import ModelError


def check_rank(rank: int, high: int, what: str) -> int:
    """Refuse a rank outside ``[1, high]`` with a message naming ``what`` and the range."""
    if not 1 <= rank <= high:
        raise ModelError(f"{what}: rank {rank} is out of range; allowed [1, {high}]")
    return int(rank)


def rank_for_fraction(m: int, n: int, fraction: float, per_rank: int | None = None) -> int:
    """Largest rank ``r`` whose factors keep at most ``fraction`` of the ``m·n`` parameters.

    A rank-``r`` factorization stores ``r·(m + n)`` numbers (``per_rank`` overrides ``m + n``,
    e.g. ``m + n + 1`` with explicit singular values), so ``r = floor(fraction·m·n / (m + n))``,
    at least 1 and at most ``min(m, n)``.
    """
    per_rank = per_rank if per_rank is not None else m + n
    return max(1, min(min(m, n), math.floor(fraction * m * n / per_rank)))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` with ``Σ_{i<r} s_i² ≥ energy · Σ s_i²`` (the energy kept by truncation)."""
    s2 = singular_values.detach().double().pow(2)
    total = float(s2.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(s2, 0) / total
    # A small slack so that energy=1.0 keeps every non-negligible value despite rounding.
    r = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype)))
    return max(1, min(r + 1, len(s2)))


def unfolding_ranks(
    tensor: torch.Tensor, groups: Sequence[Sequence[int]], energy: float
) -> list[int]:
    """For each group of modes, the rank keeping ``energy`` of ``Σσ²`` of the unfolding
    ``tensor_(group) × (other modes)`` (:func:`rank_for_energy`).

    These unfoldings are the ones TT-SVD (groups ``{1..k}``), the hierarchical SVD (one per tree
    node) and HOSVD (single modes) truncate, so each bond's rank follows its own spectrum; TT-SVD
    then errs by at most ``√(Σ_k (1 − energy))·‖W‖`` (Oseledets 2011, Thm. 2.2).
    """
    t = tensor.detach().double()
    return [rank_for_energy(torch.linalg.svdvals(unfold(t, group)), energy) for group in groups]


def unfold(tensor: torch.Tensor, modes: Sequence[int]) -> torch.Tensor:
    """The matricization ``tensor_(modes) × (other modes)``: ``modes`` index the rows."""
    rest = [m for m in range(tensor.dim()) if m not in modes]
    return tensor.permute(*modes, *rest).reshape(math.prod(tensor.shape[m] for m in modes), -1)


def scale_ranks(
    modes: Sequence[int], params_of: Callable[[tuple[int, ...]], int], budget: float
) -> tuple[int, ...]:
    """Ranks ``ceil(α·n_i)`` for the largest ``α ∈ (0, 1]`` with ``params_of(ranks) ≤ budget``.

    Used for the fraction rule of multi-rank formats (Tucker-2, TT, HT): the ranks shrink
    together in proportion to the mode sizes. The smallest ranks (all 1) are returned if even
    they exceed the budget.
    """
    lo, hi = 0.0, 1.0
    best = tuple(1 for _ in modes)
    for _ in range(40):
        mid = (lo + hi) / 2
        ranks = tuple(max(1, math.ceil(mid * n)) for n in modes)
        if params_of(ranks) <= budget:
            best, lo = ranks, mid
        else:
            hi = mid
    full = tuple(modes)
    return full if params_of(full) <= budget else best


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_objective(
    sigma2: float, L: int, M: int, s: np.ndarray, residual: float, xubar: float
) -> float:
    # Negative free energy of EVBMF as a function of the noise variance (Nakajima et al. 2013).
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    term1 = np.sum(z2 - np.log(z2))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log((tau_z1 + 1) / z1))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    return float(term1 + term2 + term3 + term4 + residual / (M * sigma2) + (L - H) * np.log(sigma2))


def evbmf_rank(matrix: torch.Tensor, sigma2: float | None = None) -> int:
    """Rank chosen by empirical variational Bayesian matrix factorization (analytic solution).

    Nakajima, Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational
    Bayesian matrix factorization", JMLR 2013, Theorem 13: a singular value survives when it
    exceeds ``sqrt(M·σ²·(1 + τ̄)(1 + α/τ̄))`` with ``α = L/M``, ``τ̄ = 2.5129·sqrt(α)``; the noise
    variance ``σ²`` is estimated by minimising the free energy when not given. This is the rank
    selection Kim et al. (ICLR 2016) apply to the two unfoldings of a conv kernel.

    Returns at least 1.
    """
    Y = matrix.detach().double().cpu().numpy()
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    if L == 1:
        return 1
    s = np.linalg.svd(Y, compute_uv=False)
    H = L
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    residual = 0.0
    if sigma2 is None:
        xubar = (1 + tauubar) * (1 + alpha / tauubar)
        eH_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
        eH_ub = max(0, min(eH_ub, H - 2))
        upper = (np.sum(s**2) + residual) / (L * M)
        lower = max(s[eH_ub + 1] ** 2 / (M * xubar), np.mean(s[eH_ub + 1 :] ** 2) / M)
        if not upper > lower:
            lower = upper * 1e-6
        lower = max(lower, 1e-300)
        result = minimize_scalar(
            _evb_objective,
            args=(L, M, s, residual, xubar),
            bounds=(lower, upper),
            method="bounded",
        )
        sigma2 = float(result.x)
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return max(1, int(np.sum(s > threshold)))


def tucker2_vbmf_ranks(weight: torch.Tensor) -> tuple[int, int]:
    """Tucker-2 ranks (output, input) of a conv kernel by EVBMF on its mode-0 and mode-1
    unfoldings, as Kim et al. 2016 do."""
    out_ch, in_ch = weight.shape[:2]
    unfold0 = weight.reshape(out_ch, -1)
    unfold1 = weight.transpose(0, 1).reshape(in_ch, -1)
    return min(evbmf_rank(unfold0), out_ch), min(evbmf_rank(unfold1), in_ch)


def matrix_rank(
    config: object | None,
    singular_values: torch.Tensor,
    m: int,
    n: int,
    *,
    per_rank: int | None = None,
    what: str = "matrix",
    default_fraction: float = 0.5,
) -> int:
    """The rank a config asks for, for an ``m × n`` matrix with the given singular values.

    Reads the shared rank fields of a config (``rank``, ``energy``, ``rank_fraction``; at most one
    is set, the fraction ``default_fraction`` applies when none is) and checks the exact rank
    against ``[1, min(m, n)]``.
    """
    rank = getattr(config, "rank", None)
    energy = getattr(config, "energy", None)
    fraction = getattr(config, "rank_fraction", None)
    if rank is not None:
        return check_rank(int(rank), min(m, n), what)
    if energy is not None:
        return rank_for_energy(singular_values, energy)
    return rank_for_fraction(m, n, fraction if fraction is not None else default_fraction, per_rank)
