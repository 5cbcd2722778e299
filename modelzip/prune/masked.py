"""Layers whose weight carries a fixed 0/1 mask: pruned connections stay zero through training.

While fine-tuning, the dense weight and a boolean mask are kept so that gradients flow to the kept
weights only (the product ``weight * mask`` is what the layer computes). When saved, only the kept
values and a bit mask (one bit per weight) are written: at sparsity ``s`` a float32 layer takes
``n/8 + 4·(1−s)·n`` bytes instead of ``4n``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.module import CompressedModule, conv2d, conv_args, dense_linear, register_layer


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor -> uint8 tensor of its bits (numpy's packbits, big-endian within a byte)."""
    bits = np.packbits(mask.detach().cpu().numpy().reshape(-1))
    return torch.from_numpy(bits)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`."""
    n = int(np.prod(shape))
    bits = np.unpackbits(packed.cpu().numpy(), count=n).astype(bool)
    return torch.from_numpy(bits).reshape(shape)


class _Masked(CompressedModule):
    """Shared behaviour of masked layers; subclasses define ``_dense_type`` and ``forward``."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    mask: torch.Tensor

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Install a new mask (same shape as the weight) and zero the pruned weights."""
        self.mask.copy_(mask.to(self.mask.device))
        self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.weight * self.mask
        # Inference: reuse the product until the weight or the mask changes, so a pruned layer
        # costs no more than its dense form.
        key = (self.weight._version, self.mask._version, self.weight.data_ptr())
        if getattr(self, "_cached_key", None) != key:
            self._cached = self.weight * self.mask
            self._cached_key = key
        return self._cached

    def sparsity(self) -> float:
        """Fraction of pruned weights."""
        return 1.0 - float(self.mask.sum().item()) / self.mask.numel()

    def param_count(self) -> int:
        kept = int(self.mask.sum().item())
        return kept + (self.bias.numel() if self.bias is not None else 0)

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
        mask = unpack_mask(state["mask_bits"], tuple(self.weight.shape)).to(self.weight.device)
        values = state["values"].to(self.weight)
        if values.numel() != int(mask.sum()):
            raise ValueError(f"{values.numel()} kept values for a mask of {int(mask.sum())}")
        self.mask.copy_(mask)
        self.weight.zero_()
        self.weight[mask] = values
        if self.bias is not None:
            self.bias.copy_(state["bias"])

    def _copy_from(self, dense: nn.Module) -> None:
        with torch.no_grad():
            self.weight.copy_(dense.weight)
            if self.bias is not None:
                self.bias.copy_(dense.bias)


@register_layer
class MaskedLinear(_Masked):
    """``nn.Linear`` with a fixed pruning mask on its weight."""

    stands_for = "Linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._init_mask()

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> MaskedLinear:
        layer = cls(dense.in_features, dense.out_features, dense.bias is not None)
        layer = layer.to(device=dense.weight.device, dtype=dense.weight.dtype)
        layer._copy_from(dense)
        return layer

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.masked_weight(), self.bias)


@register_layer
class MaskedConv2d(_Masked):
    """``nn.Conv2d`` with a fixed pruning mask on its weight."""

    stands_for = "Conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.conv_args = {
            **conv_args(
                in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
            ),
            "padding_mode": padding_mode,
        }
        shape = (out_channels, in_channels // groups, *self.conv_args["kernel_size"])
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._init_mask()

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> MaskedConv2d:
        if dense.padding_mode != "zeros":
            raise ValueError(f"padding_mode {dense.padding_mode!r} is not supported")
        layer = cls(
            dense.in_channels,
            dense.out_channels,
            dense.kernel_size,
            dense.stride,
            dense.padding,
            dense.dilation,
            dense.groups,
            dense.bias is not None,
        )
        layer = layer.to(device=dense.weight.device, dtype=dense.weight.dtype)
        layer._copy_from(dense)
        return layer

    def spec(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_args
        w = self.masked_weight()
        return conv2d(x, w, self.bias, a)

    def to_dense(self) -> nn.Conv2d:
        dense = nn.Conv2d(**self.conv_args).to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.masked_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense
