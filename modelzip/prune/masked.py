"""Layers whose weight carries a fixed 0/1 mask: pruned connections stay zero through training.

While fine-tuning, the dense weight and a boolean mask are kept so that gradients flow to the kept
weights only (the product ``weight * mask`` is what the layer computes). When saved, only the kept
values and a bit mask (one bit per weight) are written: at sparsity ``s`` a float32 layer takes
``n/8 + 4·(1−s)·n`` bytes instead of ``4n``.

The storage is one :class:`MaskFormat`, mixed into the linear and conv ops of
:mod:`modelzip.core.compressed`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.module import register_layer


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor -> uint8 tensor of its bits (numpy's packbits, big-endian within a byte)."""
    bits = np.packbits(mask.detach().cpu().numpy().reshape(-1))
    return torch.from_numpy(bits)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`."""
    n = int(np.prod(shape))
    bits = np.unpackbits(packed.cpu().numpy(), count=n).astype(bool)
    return torch.from_numpy(bits).reshape(shape)


class MaskFormat(WeightFormat):
    """Storage: a trainable dense ``weight`` and a boolean ``mask``; saved as the kept values
    and the mask's bits."""

    onnx_export = "dense: ONNX has no sparse weight type; the zeros stay in a float weight"
    executable_forms = ("dense", "sparse")
    kept_weights = True

    weight: nn.Parameter
    mask: torch.Tensor
    bias: nn.Parameter | None

    def _init_format(self, weight_shape: tuple[int, ...]) -> None:
        self.weight_shape = tuple(weight_shape)
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.register_buffer("mask", torch.ones(weight_shape, dtype=torch.bool))

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> Any:
        """``dense`` (an ``nn.Linear``/``nn.Conv2d``) with nothing pruned yet, in its dtype."""
        layer = cls.like(dense).to(dtype=dense.weight.dtype)  # type: ignore[attr-defined]
        with torch.no_grad():
            layer.weight.copy_(dense.weight)
            if layer.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    def decode_weight(self) -> torch.Tensor:
        return self.masked_weight()

    def masked_weight(self) -> torch.Tensor:
        """``weight * mask`` (differentiable), what pruning criteria rank."""
        return self.weight * self.mask

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Install a new mask (same shape as the weight) and zero the pruned weights."""
        self.mask.copy_(mask.to(self.mask.device))
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def prune_with(self, mask_fn: Any, sparsity: float) -> None:
        """Prune to ``sparsity`` with ``mask_fn(weight, sparsity) -> keep``; pruned weights stay
        pruned."""
        self.set_mask(mask_fn(self.masked_weight(), sparsity) & self.mask)

    def weight_params(self) -> int:
        return int(self.mask.sum().item())

    def sparsity(self) -> float:
        """Fraction of pruned weights."""
        return 1.0 - self.weight_params() / self.mask.numel()

    def packed_state(self) -> dict[str, torch.Tensor]:
        state = {
            "values": self.weight.detach()[self.mask].contiguous(),
            "mask_bits": pack_mask(self.mask),
        }
        if self.bias is not None:
            state["bias"] = self.bias.detach()
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        mask = unpack_mask(state["mask_bits"], self.weight_shape).to(self.weight.device)
        values = state["values"].to(self.weight)
        if values.numel() != int(mask.sum()):
            raise ValueError(f"{values.numel()} kept values for a mask of {int(mask.sum())}")
        self.mask.copy_(mask)
        self.weight.zero_()
        self.weight[mask] = values
        if self.bias is not None:
            self.bias.copy_(state["bias"])


#: The name other modules test masked layers by.
_Masked = MaskFormat


@register_layer
class MaskedLinear(MaskFormat, CompressedLinear):
    """``nn.Linear`` with a fixed pruning mask on its weight."""


@register_layer
class MaskedConv2d(MaskFormat, CompressedConv2d):
    """``nn.Conv2d`` with a fixed pruning mask on its weight."""
