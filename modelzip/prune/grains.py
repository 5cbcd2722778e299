"""Pruning grains (the survey's Fig. 18): which weights are removed together.

Every function here takes a weight tensor and returns a boolean *keep* mask of the same shape. A
weight is viewed as a matrix ``W`` of shape ``(out, fan_in)`` (a conv filter ``(O, I, kh, kw)`` as
``(O, I·kh·kw)``); grains are then

* element-wise: single weights (:func:`modelzip.prune.magnitude.magnitude_mask`);
* vector-wise: whole rows (all inputs of one output), whole columns (one input to every output),
  or N:M groups (at most ``N`` nonzeros in every ``M`` consecutive weights of a row, the pattern
  of NVIDIA's sparse tensor cores, Mishra et al. 2021);
* block-wise: ``b_r × b_c`` tiles of ``W``, or the ``kh × kw`` kernels of a conv (Mao et al.,
  "Exploring the Granularity of Sparsity in CNNs", 2017);

and :func:`reorder_for_blocks` permutes the rows and columns of an element-wise sparse matrix so
that its nonzeros gather into dense blocks.

A target sparsity ``s`` is met exactly at the grain: ``round(s · G)`` of the ``G`` groups are
removed (those of smallest L1 or L2 norm; ties by position), so the element sparsity is
``round(s · G) / G``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Norm = Literal["l1", "l2"]


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is out of range; allowed [0, 1)")


def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``(out, fan_in)``; a bias-free view, no copy."""
    return weight.reshape(weight.shape[0], -1) if weight.dim() > 1 else weight.reshape(1, -1)


def group_norms(groups: torch.Tensor, norm: Norm = "l2") -> torch.Tensor:
    """Norm of each group along the last dimension: L1 ``Σ|w|`` or L2 ``sqrt(Σ w²)``."""
    groups = groups.detach().float()
    return groups.abs().sum(-1) if norm == "l1" else groups.pow(2).sum(-1).sqrt()


def keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) that drops the ``round(sparsity · n)`` lowest scores."""
    _check_sparsity(sparsity)
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    n_pruned = round(sparsity * flat.numel())
    if n_pruned:
        # A stable sort makes the choice among equal scores deterministic.
        keep[torch.sort(flat, stable=True).indices[:n_pruned]] = False
    return keep.reshape(scores.shape)


def vector_mask(
    weight: torch.Tensor, sparsity: float, axis: Literal["row", "column"], norm: Norm = "l2"
) -> torch.Tensor:
    """Remove whole rows (output units, conv filters) or columns (inputs) of ``W``."""
    w = matrix_view(weight)
    if axis == "row":
        keep = keep_top(group_norms(w, norm), sparsity)[:, None].expand_as(w)
    elif axis == "column":
        keep = keep_top(group_norms(w.t(), norm), sparsity)[None, :].expand_as(w)
    else:
        raise ValueError(f"axis={axis!r} is not allowed; choose one of ['row', 'column']")
    return keep.reshape(weight.shape).clone()


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights in every ``m`` consecutive weights of each row.

    The sparsity is exactly ``1 - n/m``. The row length (``fan_in``) must be a multiple of ``m``.
    """
    if not 0 <= n <= m or m < 1:
        raise ValueError(f"N:M needs 0 <= N <= M and M >= 1, got N={n}, M={m}")
    w = matrix_view(weight)
    if w.shape[1] % m:
        raise ValueError(f"N:M groups of M={m} do not divide the row length {w.shape[1]}")
    groups = w.detach().abs().reshape(w.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    if n:
        # A stable descending sort keeps the earliest of equal magnitudes.
        order = torch.sort(groups, dim=-1, stable=True, descending=True).indices[..., :n]
        keep.scatter_(-1, order, True)
    return keep.reshape(weight.shape)


def block_mask(
    weight: torch.Tensor, sparsity: float, block: tuple[int, int], norm: Norm = "l2"
) -> torch.Tensor:
    """Remove whole ``block[0] × block[1]`` tiles of ``W`` (both must divide its shape)."""
    w = matrix_view(weight)
    br, bc = block
    if br < 1 or bc < 1 or w.shape[0] % br or w.shape[1] % bc:
        raise ValueError(
            f"blocks of {br}x{bc} do not divide the {w.shape[0]}x{w.shape[1]} weight matrix"
        )
    tiles = w.reshape(w.shape[0] // br, br, w.shape[1] // bc, bc).permute(0, 2, 1, 3)
    keep = keep_top(group_norms(tiles.reshape(*tiles.shape[:2], -1), norm), sparsity)
    full = keep[:, None, :, None].expand(-1, br, -1, bc)
    return full.reshape(weight.shape).clone()


def kernel_mask(weight: torch.Tensor, sparsity: float, norm: Norm = "l2") -> torch.Tensor:
    """Remove whole ``kh × kw`` kernels of a conv weight ``(O, I, kh, kw)``."""
    if weight.dim() != 4:
        raise ValueError(f"kernel-wise pruning needs a conv weight (4-D), got {weight.dim()}-D")
    kernels = weight.reshape(*weight.shape[:2], -1)
    keep = keep_top(group_norms(kernels, norm), sparsity)
    return keep[:, :, None, None].expand_as(weight).clone()


def block_density(mask: torch.Tensor | np.ndarray, block: tuple[int, int]) -> float:
    """Nonzeros over the area of the nonzero blocks: 1.0 when every touched block is full.

    The matrix is padded with zeros to a multiple of the block shape.
    """
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    m = m.reshape(m.shape[0], -1)
    br, bc = block
    rows, cols = -(-m.shape[0] // br) * br, -(-m.shape[1] // bc) * bc
    padded = np.zeros((rows, cols), dtype=bool)
    padded[: m.shape[0], : m.shape[1]] = m
    per_block = padded.reshape(rows // br, br, cols // bc, bc).sum(axis=(1, 3))
    touched = int((per_block > 0).sum())
    return float(m.sum()) / (touched * br * bc) if touched else 1.0


def _lex_order(patterns: np.ndarray) -> np.ndarray:
    """Order of the rows of a boolean matrix, lexicographically by their bits (dense first)."""
    keys = np.packbits(patterns, axis=1)
    # np.lexsort sorts by the last key first; reversing the columns makes column 0 primary,
    # and inverting the bytes puts rows with early nonzeros first.
    return np.lexsort((~keys)[:, ::-1].T) if keys.shape[1] else np.arange(len(patterns))


def reorder_for_blocks(
    mask: torch.Tensor | np.ndarray, rounds: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column permutations that gather the nonzeros of ``mask`` into dense blocks.

    Alternately sorts the columns by their pattern over the (ordered) rows and the rows by their
    pattern over the (ordered) columns: a doubly lexical ordering, which brings rows (columns)
    with equal patterns together, so a matrix that is a permuted block-diagonal is restored
    exactly. Apply as ``W[rows][:, cols]``; the layer then computes ``y[rows] = W' x[cols]``.

    Returns
    -------
    (rows, cols):
        Index arrays; compare :func:`block_density` of ``mask[rows][:, cols]`` with ``mask``'s.
    """
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    m = m.reshape(m.shape[0], -1)
    rows, cols = np.arange(m.shape[0]), np.arange(m.shape[1])
    for _ in range(rounds):
        cols = cols[_lex_order(m[rows][:, cols].T)]
        rows = rows[_lex_order(m[rows][:, cols])]
    return rows, cols
