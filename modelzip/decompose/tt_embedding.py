"""TT embedding: the lookup table of ``nn.Embedding`` as a TT-matrix (TensorLy's TT-SVD)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import load_dense, register_layer
from modelzip.core.workload import Workload
from modelzip.decompose._ops import matmul_workloads
from modelzip.decompose.factorized import factorize, modes_for
from modelzip.decompose.tt import TTMatrix, tt_matrix


@register_layer
class TTEmbedding(TTMatrix):
    """TT embedding (Hrinchuk et al., "Tensorized embedding layers", 2020): the ``V × D`` table as
    a TT-matrix with vocabulary modes ``v_k`` and embedding modes ``e_k``; a lookup multiplies
    the ``d`` core slices picked by the digits of the token id, never forming the table.

    Parameter count: ``Σ_k r_{k-1}·v_k·e_k·r_k``.
    """

    onnx_export = "refused: its lookup reshapes by the number of ids, which tracing would fix"
    executable_forms = ("dense",)
    factor_weights = True  # a later quantize_weights/int8 codes its cores (FactorQuantized)

    stands_for = "Embedding"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        vocab_modes: Any,
        embedding_modes: Any,
        ranks: Any,
        padding_idx: int | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        # The table is read as an "out × in" matrix: its rows are looked up.
        super().__init__(
            embedding_dim, num_embeddings, embedding_modes, vocab_modes, ranks, False, device, dtype
        )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None and not -num_embeddings <= int(padding_idx) < num_embeddings:
            raise ValueError(
                f"padding_idx={padding_idx} is out of range; allowed "
                f"[{-num_embeddings}, {num_embeddings - 1}] or None"
            )
        self.padding_idx = padding_idx

    @classmethod
    def from_dense(
        cls, dense: nn.Embedding, config: Any = None, *, ranks: Any = None
    ) -> TTEmbedding:
        if dense.max_norm is not None or dense.sparse:
            raise ModelError("TT embedding does not support max_norm or sparse gradients")
        W = dense.weight  # V × D, read as an "out × in" matrix: rows are looked up
        V, D = W.shape
        d = getattr(config, "d", None) or 3
        vocab = tuple(getattr(config, "out_modes", None) or factorize(V, d))
        emb = tuple(getattr(config, "in_modes", None) or factorize(D, len(vocab)))
        proxy = type("M", (), {"in_modes": emb, "out_modes": vocab, "d": len(vocab)})()
        emb, vocab = modes_for(D, V, proxy)
        cores, ranks = tt_matrix(W, emb, vocab, config, "Embedding", ranks)
        layer = cls(V, D, vocab, emb, ranks, dense.padding_idx, W.device, W.dtype)
        return layer.load_factors(cores, None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out: torch.Tensor | None = None
        stride = math.prod(self.out_modes)
        for core, v in zip(self.tt_cores, self.out_modes, strict=False):
            stride //= v
            part = core[:, (flat // stride) % v].permute(1, 0, 2, 3)  # n, r, e, r'
            if out is None:
                out = part[:, 0]  # n, e, r'
            else:
                n, _p, r = out.shape
                out = torch.bmm(out, part.reshape(n, r, -1)).reshape(n, -1, part.shape[-1])
        rows = out.reshape(len(flat), -1)[:, : self.embedding_dim]
        return rows.reshape(*ids.shape, self.embedding_dim)

    def to_dense(self) -> nn.Embedding:
        dense = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx)
        return load_dense(dense, self.weight().detach(), None)  # type: ignore[return-value]

    def spec(self) -> dict[str, Any]:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "vocab_modes": list(self.out_modes),
            "embedding_modes": list(self.in_modes),
            "ranks": list(self.ranks),
            "padding_idx": self.padding_idx,
        }

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        n = inputs[0].numel()
        steps, rows = [], n * self.in_modes[0]
        for k in range(1, self.d):
            steps.append((rows, self.ranks[k], self.in_modes[k] * self.ranks[k + 1]))
            rows *= self.in_modes[k]
        bits = self.tt_cores[0].element_size() * 8
        return matmul_workloads(name, type(self).__name__, steps, self.param_count(), bits)
