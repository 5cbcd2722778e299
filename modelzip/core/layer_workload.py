"""The workload of one call of a plain torch layer (conv, linear, embedding), from its tensors.

It knows nothing of compressed layers on purpose: :class:`~modelzip.core.module.CompressedModule`
describes itself by default as its dense equivalent through :func:`plain_workload`, and
:func:`modelzip.core.counting.dense_workload` adds the case of a compressed layer that describes
itself. Both build on this module, so neither has to import the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from modelzip.core.workload import Workload


def tensor_bits(t: torch.Tensor | None) -> int:
    """Bits per element of ``t`` (32 when there is no tensor)."""
    if t is None:
        return 32
    return t.element_size() * 8


def tensor_bytes(t: Any) -> int:
    """Bytes of ``t`` if it is a tensor, else 0."""
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def zero_fraction(weight: Any) -> float:
    """Fraction of exactly-zero entries of ``weight`` (0 when it is no tensor or empty)."""
    if not isinstance(weight, torch.Tensor) or weight.numel() == 0:
        return 0.0
    return float((weight == 0).sum().item()) / weight.numel()


def weight_structure(weight: Any) -> str:
    """How the zeros of ``weight`` are laid out: ``"vector"``, ``"block"``, ``"nm"`` or
    ``"unstructured"`` (also for a weight without zeros).

    Read from the weight itself, so any pruning method that leaves the pattern is recognised
    (``nm_prune``, ``block_prune``, ``vector_prune``, channel masks). The matrix is ``(out,
    fan_in)``. ``vector``: every zero lies in an all-zero row or column. ``block``: every zero lies
    in an all-zero tile of 2x2 ... 16x16, or in a zero conv kernel. ``nm``: in groups of ``m``
    consecutive fan-in weights (m = 2 ... 16) no group is full and nearly all hold the same count,
    which is what keeps the lanes of a sparse engine balanced.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.numel() == 0:
        return "unstructured"
    nz = weight.detach().reshape(weight.shape[0], -1) != 0
    zeros = int((~nz).sum())
    if zeros == 0:
        return "unstructured"
    rows, cols = nz.shape
    in_zero_rows = int((~nz[~nz.any(1)]).sum())
    in_zero_cols = int((~nz[:, ~nz.any(0)]).sum())
    if in_zero_rows == zeros or in_zero_cols == zeros:
        return "vector"
    tiles = [(b, b) for b in (2, 4, 8, 16)]
    if weight.dim() == 4:
        tiles.append((1, weight.shape[2] * weight.shape[3]))
    for br, bc in tiles:
        if rows % br or cols % bc or br * bc == 1:
            continue
        tile_nz = nz.reshape(rows // br, br, cols // bc, bc).any(3).any(1)
        if int((~tile_nz).sum()) * br * bc == zeros:
            return "block"
    for m in (2, 4, 8, 16):
        if cols % m:
            continue
        counts = nz.reshape(rows, cols // m, m).sum(2)
        n = int(counts.max())
        if n < m and float((counts == n).float().mean()) >= 0.95:
            return "nm"
    return "unstructured"


def plain_workload(
    name: str,
    module: nn.Module,
    inputs: tuple[Any, ...],
    output: Any,
    *,
    params: int | None = None,
    weight_bits: int | None = None,
    sparsity: float | None = None,
    weight_bytes: int | None = None,
) -> Workload:
    """The workload of one call of ``module`` by the rules of its torch class.

    ``params``, ``weight_bits``, ``sparsity`` and ``weight_bytes`` override what the module's
    own tensors say (a compressed layer passes its stored sizes); ``TypeError`` for a class
    without a rule.
    """
    x = inputs[0] if inputs else None
    out = output[0] if isinstance(output, tuple) else output
    act_bits = tensor_bits(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else 32
    weight = getattr(module, "weight", None)
    wbits = weight_bits if weight_bits is not None else tensor_bits(weight)
    n_params = params if params is not None else sum(p.numel() for p in module.parameters())
    sp = sparsity if sparsity is not None else zero_fraction(weight)
    common: dict[str, Any] = {
        "name": name,
        "module_type": type(module).__name__,
        "params": n_params,
        "weight_bits": wbits,
        "act_bits": act_bits,
        "weight_sparsity": sp,
        "weight_structure": weight_structure(weight) if sp > 0 else "unstructured",
        "input_bytes": tensor_bytes(x),
        "output_bytes": tensor_bytes(out),
    }
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        g = module.groups
        if isinstance(module, nn.Conv2d):
            n, c, h, w = x.shape
            _, k, p, q = out.shape
            r, s = module.kernel_size
            sh, sw = module.stride
        else:
            n, c, h = x.shape
            _, k, p = out.shape
            w, q, (r,), s, (sh,), sw = 1, 1, module.kernel_size, 1, module.stride, 1
        wl = Workload(
            op="conv",
            N=n,
            C=c // g,
            K=k // g,
            R=r,
            S=s,
            P=p,
            Q=q,
            H=h,
            W=w,
            stride_h=sh,
            stride_w=sw,
            groups=g,
            **common,
        )
    elif isinstance(module, nn.Linear):
        rows = x.numel() // x.shape[-1] if x.dim() else 1
        wl = Workload(op="linear", N=rows, C=module.in_features, K=module.out_features, **common)
    elif isinstance(module, nn.Embedding):
        wl = Workload(
            op="embedding", N=x.numel(), C=module.num_embeddings, K=module.embedding_dim, **common
        )
    else:
        raise TypeError(f"no workload rule for {type(module).__name__}")
    if weight_bytes is None:
        weight_bytes = (wl.weight_count * wbits + 7) // 8
    return dataclasses.replace(wl, weight_bytes=weight_bytes)
