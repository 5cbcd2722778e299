"""Executable layers: compressed layers in the form the kernels of this package run fast.

Each is a :class:`~modelzip.core.module.CompressedModule`
(``from_dense``/``to_dense``/``spec``) and is registered, so a materialized model saves and loads
like any other. Inference only: the kernels
have no backward, so these layers refuse to run with autograd on their inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.module import CompressedModule, dense_linear, register_layer
from modelzip.kernels.bitpack import pack_signs, unpack_signs, words_for, words_tensor

BINARY_MODES = ("xnor", "bwn")


def binary_scales(weight: torch.Tensor) -> torch.Tensor | None:
    """``α`` per output row when every weight of row ``k`` is ``±α_k`` (``α_k > 0``), else None."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    alpha = w.abs().amax(dim=1)
    if bool((alpha == 0).any()) or not bool((w.abs() == alpha[:, None]).all()):
        return None
    return alpha


def _no_grad_input(x: torch.Tensor, name: str) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError(f"{name} is an inference kernel; run it under torch.no_grad()")


class _Binary(CompressedModule):
    weight_bits = 1
    words: torch.Tensor
    alpha: torch.Tensor
    bias: nn.Parameter | None

    def _init_binary(self, rows: int, k: int, bias: bool, mode: str, n_words: int = 0) -> None:
        if mode not in BINARY_MODES:
            raise ValueError(f"mode={mode!r}: binary layers run {BINARY_MODES}")
        self.mode, self.k = mode, k
        n_words = n_words or words_for(k)
        self.register_buffer("words", torch.zeros(rows, n_words, dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(rows))
        self.bias = nn.Parameter(torch.zeros(rows)) if bias else None

    @torch.no_grad()
    def _binarize_from(self, dense: nn.Module) -> None:
        alpha = binary_scales(dense.weight)
        if alpha is None:
            raise ValueError("weights are not ±α per output channel; binarize the layer first")
        self.alpha.copy_(alpha)
        self.words.copy_(words_tensor(self._pack(dense.weight)))
        if self.bias is not None:
            self.bias.copy_(dense.bias)

    def _pack(self, weight: torch.Tensor) -> np.ndarray:
        return pack_signs(weight.reshape(weight.shape[0], -1))

    def _words(self) -> np.ndarray:
        return self.words.numpy().view(np.uint64)

    def _signs(self) -> torch.Tensor:
        """``sign(W)`` as a float ``rows × K`` matrix."""
        return torch.from_numpy(unpack_signs(self._words(), self.k))

    def binary_weight(self) -> torch.Tensor:
        """``α_k · sign(W_k)`` as a float ``rows × K`` matrix (unfold order for convolutions)."""
        return self._signs() * self.alpha[:, None]

    def param_count(self) -> int:
        return self.words.shape[0] * self.k + (self.bias.numel() if self.bias is not None else 0)

    def _gemm(self, x2: torch.Tensor, words: np.ndarray) -> torch.Tensor:
        """``x2 (n × K) · sign(W)ᵀ`` from row-packed ``words``: XNOR on packed signs, or BWN
        adds/subtracts."""
        from modelzip.kernels.binary import bwn_gemm, xnor_gemm_affine

        if self.mode == "xnor":
            beta = self.bias.detach() if self.bias is not None else torch.zeros_like(self.alpha)
            y = xnor_gemm_affine(pack_signs(x2), words, self.k, self.alpha.numpy(), beta.numpy())
            return torch.from_numpy(y)  # scale and bias applied in the kernel
        y = bwn_gemm(x2.float().numpy(), words, self.k)
        y = torch.from_numpy(y).mul_(self.alpha)
        if self.bias is not None:
            y.add_(self.bias.detach())
        return y


@register_layer
class BinaryLinear(_Binary):
    """``y = α ⊙ (x·sign(W)ᵀ) + b`` with the signs packed 64 per word.

    ``mode="xnor"`` (XNOR-Net/BNN): the input is binarized too, ``sign(x)``, and the product is
    ``K − 2·popcount(x ⊕ w)``; ``mode="bwn"``: real inputs, additions and subtractions only.
    """

    stands_for = "Linear"

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, mode: str = "bwn"
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_binary(out_features, in_features, bias, mode)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> BinaryLinear:
        mode = getattr(config, "mode", config if isinstance(config, str) else "bwn")
        layer = cls(dense.in_features, dense.out_features, dense.bias is not None, mode)
        layer._binarize_from(dense)
        return layer

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "mode": self.mode,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _no_grad_input(x, type(self).__name__)
        lead = x.shape[:-1]
        y = self._gemm(x.detach().reshape(-1, self.in_features).cpu(), self._words())
        return y.reshape(*lead, self.out_features).to(x.device)

    def to_dense(self) -> nn.Linear:
        dense = dense_linear(self.binary_weight(), self.bias)
        if self.mode == "xnor":
            return _SignThen(dense)  # type: ignore[return-value]
        return dense


class _SignThen(nn.Module):
    """``layer(sign(x))`` with ``sign(0) = +1``: the dense equivalent of an XNOR layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.where(x < 0, -1.0, 1.0).to(x.dtype))


@register_layer
class BinaryConv2d(_Binary):
    """``conv2d`` with ``α ⊙ sign(W)`` weights (groups 1, zero padding), via packed im2col.

    ``mode="xnor"``: ``conv(sign x, sign W)`` exactly, the +1 padding bits removed by a cached
    correction; ``mode="bwn"``: real input columns, additions and subtractions only.
    """

    stands_for = "Conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        bias: bool = True,
        mode: str = "bwn",
    ) -> None:
        super().__init__()
        self.conv_args = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kernel_size": tuple(kernel_size),
            "stride": tuple(stride),
            "padding": tuple(padding),
            "dilation": tuple(dilation),
            "bias": bias,
        }
        taps = kernel_size[0] * kernel_size[1]
        # Words in the tap layout of the packed im2col: (ky, kx) major, channels packed.
        self._init_binary(out_channels, in_channels * taps, bias, mode,
                          taps * words_for(in_channels))  # fmt: skip
        self._corrections: dict[tuple[int, int], torch.Tensor | None] = {}
        self._row_words: np.ndarray | None = None  # unfold-order words, for BWN

    def _pack(self, weight: torch.Tensor) -> np.ndarray:
        from modelzip.kernels.binary import pack_conv_weight

        return pack_conv_weight(weight)

    def _signs(self) -> torch.Tensor:
        o, c, kh, kw = self._weight_shape()
        bits = unpack_signs(self._words().reshape(o, kh * kw, -1), c)  # (O, taps, C)
        return torch.from_numpy(bits).reshape(o, kh, kw, c).permute(0, 3, 1, 2).reshape(o, -1)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._corrections, self._row_words = {}, None
        super()._load_from_state_dict(*args, **kwargs)

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> BinaryConv2d:
        if dense.groups != 1 or dense.padding_mode != "zeros" or isinstance(dense.padding, str):
            raise ValueError("binary convolution needs groups=1 and numeric zero padding")
        mode = getattr(config, "mode", config if isinstance(config, str) else "bwn")
        layer = cls(dense.in_channels, dense.out_channels, dense.kernel_size, dense.stride,
                    dense.padding, dense.dilation, dense.bias is not None, mode)  # fmt: skip
        layer._binarize_from(dense)
        return layer

    def spec(self) -> dict[str, Any]:
        spec = {k: list(v) if isinstance(v, tuple) else v for k, v in self.conv_args.items()}
        return {**spec, "mode": self.mode}

    def _weight_shape(self) -> tuple[int, int, int, int]:
        a = self.conv_args
        return (a["out_channels"], a["in_channels"], *a["kernel_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from modelzip.kernels.binary import binary_conv2d, padding_correction

        _no_grad_input(x, type(self).__name__)
        a = self.conv_args
        x = x.detach().cpu().float()
        if self.mode == "xnor":
            hw = (x.shape[2], x.shape[3])
            if hw not in self._corrections:
                self._corrections[hw] = (
                    padding_correction(
                        self._signs().reshape(self._weight_shape()),
                        hw,
                        a["stride"],
                        a["padding"],
                        a["dilation"],
                    )
                    if any(a["padding"])
                    else None
                )
            return binary_conv2d(x, self._words(), self._weight_shape(), a["stride"],
                                 a["padding"], a["dilation"], self._corrections[hw], self.alpha,
                                 self.bias)  # fmt: skip
        cols = F.unfold(x, a["kernel_size"], a["dilation"], a["padding"], a["stride"])
        b, ck, L = cols.shape
        h = (x.shape[2] + 2 * a["padding"][0] - a["dilation"][0] * (a["kernel_size"][0] - 1)
             - 1) // a["stride"][0] + 1  # fmt: skip
        if self._row_words is None:
            self._row_words = pack_signs(self._signs())
        y = self._gemm(cols.transpose(1, 2).reshape(b * L, ck), self._row_words)  # with bias
        return y.reshape(b, h, L // h, -1).permute(0, 3, 1, 2)  # channels-last, no copy

    def to_dense(self) -> nn.Module:
        args = {k: v for k, v in self.conv_args.items()}
        dense = nn.Conv2d(**args)
        with torch.no_grad():
            dense.weight.copy_(self.binary_weight().reshape(self._weight_shape()))
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return _SignThen(dense) if self.mode == "xnor" else dense
