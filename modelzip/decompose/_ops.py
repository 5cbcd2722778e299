"""Helpers shared by the decomposed layers: contraction plans, workloads of small ops, names.

Contractions of a factorized layer (TT, HT, tensorized Tucker) are planned once per input shape
with opt_einsum, which orders the pairwise contractions to minimise multiply-accumulates; the
same plan gives the list of small matmuls that :meth:`workloads` reports to the hardware model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import opt_einsum
import torch
from torch import nn

from modelzip.core.counting import dense_workload
from modelzip.core.errors import ModelError
from modelzip.core.module import CompressedModule, dense_linear
from modelzip.core.workload import Workload

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def letters(count: int, skip: str = "") -> list[str]:
    """``count`` distinct einsum index letters not in ``skip``."""
    pool = [c for c in _LETTERS if c not in skip]
    if count > len(pool):
        raise ModelError(f"a contraction needs {count} indices; at most {len(pool)} are available")
    return pool[:count]


class ContractionPlan:
    """A MAC-minimal pairwise contraction order for one einsum equation and operand shapes.

    Parameters
    ----------
    equation:
        The einsum equation (``"bi,ij->bj"``).
    shapes:
        The shapes of the operands, in order.
    """

    def __init__(self, equation: str, shapes: Sequence[Sequence[int]]) -> None:
        self.equation = equation
        shapes = [tuple(int(s) for s in shape) for shape in shapes]
        strategy = "optimal" if len(shapes) <= 6 else "dp"
        path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=strategy)
        self.path = path
        self.steps = _steps_of(info)
        self.macs = sum(r * c * k for r, c, k in self.steps)
        self._expr = opt_einsum.contract_expression(equation, *shapes, optimize=path)

    def __call__(self, *operands: torch.Tensor) -> torch.Tensor:
        return self._expr(*operands, backend="torch")


def _steps_of(info: Any) -> list[tuple[int, int, int]]:
    """Each pairwise contraction as a matmul ``(rows, inner, cols)``: rows count batch and free
    indices of the first operand, cols the free indices of the second."""
    sizes = info.size_dict
    steps = []
    for item in info.contraction_list:
        spec = item[2]
        inputs, out = spec.split("->")
        ops = inputs.split(",")
        if len(ops) != 2:
            continue
        a, b = set(ops[0]), set(ops[1])
        both = a & b
        batch = both & set(out)
        inner = both - set(out)

        def size(idx: set[str]) -> int:
            return math.prod(sizes[i] for i in idx)

        steps.append((size(batch) * size(a - b), size(inner), size(b - a)))
    return steps


def matmul_workloads(
    name: str, module_type: str, steps: Sequence[tuple[int, int, int]], params: int, bits: int = 32
) -> list[Workload]:
    """One ``matmul`` workload per pairwise contraction (params attributed to the first op)."""
    out = []
    for i, (rows, inner, cols) in enumerate(steps):
        out.append(
            Workload(
                name=f"{name}:{i}",
                op="matmul",
                module_type=module_type,
                N=rows,
                C=inner,
                K=cols,
                params=params if i == 0 else 0,
                weight_bits=bits,
                act_bits=bits,
                weight_bytes=(inner * cols * bits + 7) // 8,
                input_bytes=rows * inner * bits // 8,
                output_bytes=rows * cols * bits // 8,
            )
        )
    return out


def linear_workload(
    name: str, module_type: str, rows: int, in_features: int, out_features: int, params: int
) -> Workload:
    """A plain ``rows × in → rows × out`` product as a ``linear`` workload (fp32)."""
    return Workload(
        name=name,
        op="linear",
        module_type=module_type,
        N=rows,
        C=in_features,
        K=out_features,
        params=params,
        weight_bytes=in_features * out_features * 4,
        input_bytes=rows * in_features * 4,
        output_bytes=rows * out_features * 4,
    )


def conv_chain_workloads(
    name: str, convs: Sequence[tuple[str, nn.Conv2d]], x: torch.Tensor
) -> list[Workload]:
    """Workloads of convolutions applied one after the other, from shapes only (meta tensors)."""
    out = []
    current = torch.empty(x.shape, device="meta", dtype=x.dtype)
    for part, conv in convs:
        # A piece a later step compressed (a masked core) takes its shape from its dense form.
        plain = conv if isinstance(conv, nn.Conv2d) else conv.to_dense()  # type: ignore[operator]
        weight = torch.empty(plain.weight.shape, device="meta", dtype=plain.weight.dtype)
        nxt = torch.nn.functional.conv2d(
            current, weight, None, plain.stride, plain.padding, plain.dilation, plain.groups
        )
        counted = getattr(conv, "param_count", None)
        params = counted() if callable(counted) else sum(p.numel() for p in conv.parameters())
        out.append(dense_workload(f"{name}:{part}", conv, (current,), nxt, params=params))
        current = nxt
    return out


def rows_of(x: torch.Tensor, features: int) -> int:
    """How many feature vectors of length ``features`` a linear layer's input holds."""
    return x.numel() // features if features else 0


class DecomposedLinear(CompressedModule):
    """A Linear held as factors: subclasses give :meth:`weight` (the dense ``M × N`` product) and
    ``workloads_for_rows(name, rows)``, which recurrent layers also call per gate matrix."""

    stands_for = "Linear"
    in_features: int
    bias: nn.Parameter | None

    def to_dense(self) -> nn.Module:
        return dense_linear(self.weight(), self.bias)  # type: ignore[attr-defined]

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        rows = rows_of(inputs[0], self.in_features)
        return self.workloads_for_rows(name, rows)  # type: ignore[attr-defined]
