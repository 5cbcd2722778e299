"""``nn.MultiheadAttention`` with its projections as layers a method can compress.

torch's ``nn.MultiheadAttention`` keeps the query, key and value projections packed in one
parameter, ``in_proj_weight`` (``3E x E``), and its forward reads that tensor (and
``out_proj.weight``) directly, so no method could replace them: every method left a ViT's
attention float32. :class:`PackedAttention` computes the same attention with the packed
projection as a Linear layer, ``in_proj`` (``E -> 3·H·d``), and the output projection
``out_proj`` (``H·d -> E``), both called as layers; :func:`attention_views` swaps it in for every
``nn.MultiheadAttention`` whose parent does not read its weights itself (torch's
``TransformerEncoderLayer`` fast path does). Methods then compress ``in_proj`` and ``out_proj`` as
any Linear, and head pruning removes heads from them (``num_heads`` changes, ``embed_dim`` does
not).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PackedAttention(nn.Module):
    """Multi-head attention as ``nn.MultiheadAttention`` computes it (``kdim = vdim = embed_dim``,
    no ``bias_k``/``bias_v``, no ``add_zero_attn``), with ``in_proj`` and ``out_proj`` layers.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(output, weights or None)``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        proj_bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.proj_bias = bool(proj_bias)
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = int(head_dim) if head_dim is not None else self.embed_dim // self.num_heads
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        inner = self.num_heads * self.head_dim
        self.in_proj = nn.Linear(self.embed_dim, 3 * inner, bias=self.proj_bias)
        self.out_proj = nn.Linear(inner, self.embed_dim, bias=self.proj_bias)

    @classmethod
    def supports(cls, mha: nn.MultiheadAttention) -> str | None:
        """Why ``mha`` has no PackedAttention form, or None when it has one."""
        if not mha._qkv_same_embed_dim:
            return "its key and value widths differ from the query's (separate projections)"
        if mha.bias_k is not None or mha.add_zero_attn:
            return "it has bias_k/bias_v or add_zero_attn"
        return None

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> PackedAttention:
        """The equivalent of ``mha`` (same weights, device and dtype, same mode)."""
        reason = cls.supports(mha)
        if reason is not None:
            raise ValueError(f"this MultiheadAttention has no packed form: {reason}")
        w = mha.in_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, None, mha.dropout, mha.in_proj_bias is not None,
                  mha.batch_first).to(device=w.device, dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            new.in_proj.weight.copy_(w)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.in_proj.bias.copy_(mha.in_proj_bias)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def _project(self, query, key, value):
        inner = self.num_heads * self.head_dim
        if query is key and key is value:
            return self.in_proj(query).split(inner, dim=-1)
        # Separate inputs: each takes its own third of the packed projection's output.
        return (
            self.in_proj(query)[..., :inner],
            self.in_proj(key)[..., inner : 2 * inner],
            self.in_proj(value)[..., 2 * inner :],
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        same = query is key and key is value
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query = query.transpose(0, 1)
            key = query if same else key.transpose(0, 1)
            value = query if same else value.transpose(0, 1)
        n, lq, _ = query.shape
        q, k, v = self._project(query, key, value)
        lk = k.shape[1]

        def heads(t: torch.Tensor, length: int) -> torch.Tensor:
            return t.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q, lq), heads(k, lk), heads(v, lk)
        mask = _merge_masks(attn_mask, key_padding_mask, is_causal, n, self.num_heads, lq, lk, q)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.num_heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights


def _merge_masks(attn_mask, key_padding_mask, is_causal, n, h, lq, lk, like):
    """One additive float mask ``(N, H, Lq, Lk)`` (broadcastable) from torch's mask arguments."""
    mask = None

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=like.dtype, device=like.device).masked_fill(
                m, float("-inf")
            )
        return m.to(like.dtype)

    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=like.device).triu(1)
    if attn_mask is not None:
        m = additive(attn_mask)
        mask = m.reshape(n, h, lq, lk) if m.dim() == 3 else m.reshape(1, 1, lq, lk)
    if key_padding_mask is not None:
        kp = additive(key_padding_mask).reshape(n, 1, 1, lk)
        mask = kp if mask is None else mask + kp
    return mask


def attention_views(model: nn.Module) -> list[str]:
    """Swap every ``nn.MultiheadAttention`` of ``model`` that has a :class:`PackedAttention`
    form, and whose parent calls it rather than reading its weights (torch's transformer layers'
    fast path), for that form, in place; the names swapped."""
    from modelzip.core.context import WEIGHT_READERS, replace_module

    done: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or type(module) is not nn.MultiheadAttention:
            continue
        if PackedAttention.supports(module) is not None:
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if isinstance(parent, WEIGHT_READERS):
            continue
        done += replace_module(model, name, PackedAttention.from_mha(module))
    return done
