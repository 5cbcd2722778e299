"""Workload records: one layer's computation as a loop nest, with its bit-widths and sparsity.

This is the interface between the model side of modelzip and the hardware model: ``hardware/``
reads only these records, never torch modules. Every layer is described in the convolution loop
nest of SCALE-Sim and Timeloop::

    for n in N, k in K (output channels), p in P, q in Q (output rows, cols),
        c in C (input channels per group), r in R, s in S (kernel rows, cols):
            out[n, k, p, q] += w[k, c, r, s] * in[n, c, p*stride_h + r, q*stride_w + s]

repeated for each of ``groups`` groups and ``time_steps`` steps. A linear layer is the case
``R = S = P = Q = 1`` with ``N`` the number of rows (batch times tokens); a recurrent cell is a
linear layer over ``[x, h]`` applied once per time step; an embedding is a lookup (no MACs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Op = Literal["conv", "linear", "recurrent", "embedding", "matmul"]
# How a layer's zero weights are laid out: "unstructured", or a pattern that keeps the PEs of a
# sparse engine equally busy (N:M groups, zero blocks, zero rows / columns).
WeightStructure = Literal["unstructured", "nm", "block", "vector"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One layer (or one small op of a decomposed layer) as a loop nest.

    ``macs`` is the dense count for the whole batch and all time steps; ``effective_macs`` skips
    the zero weights. ``weight_bytes`` is the layer's real stored size where the module reports
    one (packed bits, sparse indices included), else ``params * weight_bits / 8`` times density.
    """

    name: str
    op: Op
    module_type: str
    N: int  # batch (times tokens for linear layers over sequences)
    C: int  # input channels per group (input features for linear)
    K: int  # output channels per group (output features for linear)
    R: int = 1  # kernel height
    S: int = 1  # kernel width
    P: int = 1  # output height
    Q: int = 1  # output width
    H: int = 1  # input height (with padding excluded)
    W: int = 1  # input width
    stride_h: int = 1
    stride_w: int = 1
    groups: int = 1
    time_steps: int = 1
    params: int = 0
    weight_bits: int = 32
    act_bits: int = 32
    weight_sparsity: float = 0.0  # fraction of weights that are zero
    act_sparsity: float = 0.0  # fraction of input activations that are zero
    # Measured on a sample (modelzip.core.activation_stats): outputs zero after the activation
    # that follows, outputs a before-calculation predictor skipped, and its MACs per dense MAC.
    out_sparsity: float = 0.0
    predicted_skip: float = 0.0
    predictor_cost: float = 0.0
    weight_structure: WeightStructure = "unstructured"
    weight_bytes: int = 0
    input_bytes: int = 0
    output_bytes: int = 0

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates of the whole layer."""
        if self.op == "embedding":
            return 0
        per_group = self.N * self.K * self.P * self.Q * self.C * self.R * self.S
        return per_group * self.groups * self.time_steps

    @property
    def effective_macs(self) -> int:
        """MACs left when zero weights are skipped."""
        return round(self.macs * (1.0 - self.weight_sparsity))

    @property
    def weight_count(self) -> int:
        """Weights of the loop nest (the kernel tensor), excluding biases."""
        return self.K * self.C * self.R * self.S * self.groups

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["macs"] = self.macs
        out["effective_macs"] = self.effective_macs
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
