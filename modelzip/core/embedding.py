"""Compressed embeddings: an ``nn.Embedding`` whose table is a compressed Linear-shaped layer.

An embedding table ``(num_embeddings, embedding_dim)`` is laid out as the weight of a Linear from
``embedding_dim`` to ``num_embeddings`` features, so every method that compresses a Linear
(k-bit and int8 codes, a pruning mask, low-rank factors ...) compresses an embedding the same way:
:class:`CompressedEmbedding` holds that layer as its ``table`` and looks rows up in its weight.
A language model whose output layer shares the embedding's weight (GPT-2's ``lm_head`` and
``wte``, BERT's decoder and word embeddings) keeps it shared: the output layer *is* the table
layer, one object under two names, compressed once and counted once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.module import CompressedModule, layer_class, layer_key, register_layer


def table_weight(layer: nn.Module) -> torch.Tensor:
    """The ``(out_features, in_features)`` weight a Linear-shaped compressed layer computes with:
    its format's decoded weight (differentiable while training), else its dense form's."""
    decoded = getattr(layer, "decoded_weight", None)
    if callable(decoded):
        return decoded()
    if isinstance(layer, nn.Linear):
        return layer.weight
    to_dense = getattr(layer, "to_dense", None)
    if not callable(to_dense):
        raise TypeError(f"a {type(layer).__name__} has no weight to look embeddings up in")
    return to_dense().weight.to(next(iter(layer.buffers()), torch.empty(0)).device)


def embedding_view(embedding: nn.Embedding) -> nn.Linear:
    """A bias-free ``nn.Linear(embedding_dim, num_embeddings)`` holding a copy of the table."""
    weight = embedding.weight
    linear = nn.Linear(
        embedding.embedding_dim, embedding.num_embeddings, bias=False,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        linear.weight.copy_(weight)
    linear.__dict__[EMBEDDING_VIEW] = True
    return linear


#: Set on the Linear of :func:`embedding_view`: a table, never called on activations.
EMBEDDING_VIEW = "_modelzip_embedding_view"


def is_embedding_view(module: nn.Module) -> bool:
    """Whether ``module`` is an embedding's table seen as a Linear (no activations reach it)."""
    return bool(module.__dict__.get(EMBEDDING_VIEW, False))


@register_layer
class CompressedEmbedding(CompressedModule):
    """``nn.Embedding`` looking rows up in the weight of a compressed Linear-shaped ``table``."""

    stands_for: ClassVar[str] = "Embedding"
    onnx_export = "dense: the lookup is a Gather on the decoded float table"

    def __init__(self, table: nn.Module, padding_idx: int | None = None) -> None:
        super().__init__()
        self.table = table
        self.num_embeddings = int(table.out_features)
        self.embedding_dim = int(table.in_features)
        self.padding_idx = padding_idx

    @classmethod
    def of(cls, dense: nn.Embedding, table: nn.Module) -> CompressedEmbedding:
        """Wrap ``table`` (a compressed layer made from :func:`embedding_view` of ``dense``)."""
        if dense.max_norm is not None or dense.sparse or dense.scale_grad_by_freq:
            raise ValueError(
                "an Embedding with max_norm, sparse gradients or scale_grad_by_freq has no "
                "compressed form"
            )
        shape = (getattr(table, "out_features", None), getattr(table, "in_features", None))
        if shape != (dense.num_embeddings, dense.embedding_dim):
            raise ValueError(
                f"a {type(table).__name__} of shape {shape} cannot hold a table of "
                f"{(dense.num_embeddings, dense.embedding_dim)}"
            )
        # A bias of the table belongs to the output layer the table is tied to; the lookup
        # ignores it.
        return cls(table, dense.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, table_weight(self.table), self.padding_idx)

    def to_dense(self) -> nn.Embedding:
        dense = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx)
        with torch.no_grad():
            dense.weight.copy_(table_weight(self.table).detach())
        return dense

    def spec(self) -> dict[str, Any]:
        table = self.table
        if isinstance(table, CompressedModule):
            inner = {"class": layer_key(type(table)), "spec": table.spec()}
        else:
            inner = {"class": "Linear", "spec": {"bias": getattr(table, "bias", None) is not None}}
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "table": inner,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CompressedEmbedding:
        inner = spec["table"]
        if not isinstance(inner, dict) or not isinstance(inner.get("class"), str):
            raise ValueError("an embedding spec needs a 'table' with a 'class'")
        if inner["class"] == "Linear":
            bias = bool(inner["spec"].get("bias", False))
            table: nn.Module = nn.Linear(spec["embedding_dim"], spec["num_embeddings"], bias=bias)
        else:
            table = layer_class(inner["class"]).from_spec(inner["spec"])
        layer = cls(table, spec.get("padding_idx"))
        if (layer.num_embeddings, layer.embedding_dim) != (
            spec["num_embeddings"],
            spec["embedding_dim"],
        ):
            raise ValueError("the embedding's table does not have the declared shape")
        return layer

    def packed_state(self) -> dict[str, torch.Tensor]:
        table = self.table
        state = table.packed_state() if isinstance(table, CompressedModule) else table.state_dict()
        return {f"table.{k}": v for k, v in state.items()}

    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        inner = {k.removeprefix("table."): v for k, v in state.items()}
        if isinstance(self.table, CompressedModule):
            self.table.load_packed_state(inner)
        else:
            self.table.load_state_dict(inner)

    def storage_bytes(self) -> int:
        if isinstance(self.table, CompressedModule):
            return self.table.storage_bytes()
        return sum(t.numel() * t.element_size() for t in self.table.state_dict().values())

    def param_count(self) -> int:
        if isinstance(self.table, CompressedModule):
            return self.table.param_count()
        return sum(p.numel() for p in self.table.parameters())

    @property
    def weight_bits(self) -> int | None:
        return getattr(self.table, "weight_bits", None)
