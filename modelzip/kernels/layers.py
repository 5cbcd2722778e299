"""Executable binary layers: ``±α`` weights bit-packed, run by the kernels of this package.

One weight format, :class:`BinaryFormat` (sign bits packed 64 per word plus one ``α`` per output
row), mixed into the linear and conv ops of :mod:`modelzip.core.compressed`, with kernels of its
own for both: XNOR-popcount when the inputs are binarized too (``mode="xnor"``), BWN additions
and subtractions of real inputs otherwise (``mode="bwn"``). Registered, so a materialized model
saves and loads like any other. Inference only: the kernels have no backward, so these layers
refuse to run with autograd on their inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.compressed import CompressedConv2d, CompressedLinear, WeightFormat
from modelzip.core.geometry import ConvGeometry
from modelzip.core.layer_workload import plain_workload
from modelzip.core.module import register_layer
from modelzip.core.workload import Workload
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


class BinaryFormat(WeightFormat):
    """Storage: ``sign(W)`` packed 64 per ``int64`` word (``words``) and ``α`` per output row.

    A linear weight's rows are packed as they are; a conv weight's in the tap layout of the
    packed im2col (``(ky, kx)`` major, the channels of each tap packed into whole words).
    """

    onnx_export = (
        "refused: it runs a bit-packed XNOR/popcount kernel that ONNX has no operator for; "
        "export the model before converting it to kernel layers"
    )
    weight_bits = 1
    words: torch.Tensor
    alpha: torch.Tensor

    def _init_format(self, weight_shape: tuple[int, ...], mode: str = "bwn") -> None:
        if mode not in BINARY_MODES:
            raise ValueError(f"mode={mode!r}: binary layers run {BINARY_MODES}")
        self.weight_shape, self.mode = tuple(weight_shape), mode
        rows, self.k = weight_shape[0], math.prod(weight_shape[1:])
        taps = math.prod(weight_shape[2:])  # 1 for a linear weight
        n_words = taps * words_for(weight_shape[1])
        self.register_buffer("words", torch.zeros(rows, n_words, dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(rows))

    def format_spec(self) -> dict[str, Any]:
        return {"mode": self.mode}

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> Any:
        """From a layer whose rows are ``±α``; ``config`` is the mode (or has a ``mode``)."""
        if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
            raise ValueError("binary convolution needs groups=1 and numeric zero padding")
        alpha = binary_scales(dense.weight)
        if alpha is None:
            raise ValueError("weights are not ±α per output channel; binarize the layer first")
        mode = getattr(config, "mode", config if isinstance(config, str) else "bwn")
        layer = cls.like(dense, mode=mode)  # type: ignore[attr-defined]
        with torch.no_grad():
            layer.alpha.copy_(alpha)
            layer.words.copy_(words_tensor(layer._pack(dense.weight)))
            if layer.bias is not None:
                layer.bias.copy_(dense.bias)
        return layer

    def _pack(self, weight: torch.Tensor) -> np.ndarray:
        if weight.dim() == 4:
            from modelzip.kernels.binary import pack_conv_weight

            return pack_conv_weight(weight)
        return pack_signs(weight)

    def _words(self) -> np.ndarray:
        return self.words.cpu().numpy().view(np.uint64)

    def _signs(self) -> torch.Tensor:
        """``sign(W)`` as a float ``rows × K`` matrix (unfold order for convolutions)."""
        if len(self.weight_shape) == 2:
            return torch.from_numpy(unpack_signs(self._words(), self.k))
        o, c, kh, kw = self.weight_shape
        bits = unpack_signs(self._words().reshape(o, kh * kw, -1), c)  # (O, taps, C)
        return torch.from_numpy(bits).reshape(o, kh, kw, c).permute(0, 3, 1, 2).reshape(o, -1)

    def decode_weight(self) -> torch.Tensor:
        w = self._signs().to(self.alpha.device) * self.alpha[:, None]
        return w.reshape(self.weight_shape)

    def _kernel_cache(self) -> dict[Any, Any]:
        """Operands derived from the weight (padding corrections, row-packed words), kept as
        long as the core's cached decoded weight is: rebuilt when ``words`` or ``alpha`` change."""
        with torch.no_grad():
            w = self.decoded_weight()
        cache = self.__dict__.get("_binary_cache")
        if cache is None or cache[0] is not w:
            cache = (w, {})
            self.__dict__["_binary_cache"] = cache
        return cache[1]

    def _gemm(self, x2: torch.Tensor, words: np.ndarray, bias: torch.Tensor | None) -> torch.Tensor:
        """``α ⊙ (x2 (n × K) · sign(W)ᵀ) + b`` from row-packed ``words``: XNOR on packed signs,
        or BWN adds/subtracts."""
        from modelzip.kernels.binary import bwn_gemm, xnor_gemm_affine

        alpha = self.alpha.detach().cpu()
        beta = bias.detach().cpu() if bias is not None else None
        if self.mode == "xnor":
            beta = torch.zeros_like(alpha) if beta is None else beta
            y = xnor_gemm_affine(pack_signs(x2), words, self.k, alpha.numpy(), beta.numpy())
            return torch.from_numpy(y)  # scale and bias applied in the kernel
        y = torch.from_numpy(bwn_gemm(x2.float().numpy(), words, self.k)).mul_(alpha)
        return y if beta is None else y.add_(beta)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        _no_grad_input(x, type(self).__name__)
        y = self._gemm(x.detach().reshape(-1, self.k).cpu(), self._words(), bias)
        return y.reshape(*x.shape[:-1], self.weight_shape[0]).to(x.device)

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        from modelzip.kernels.binary import binary_conv2d, conv_output_hw, padding_correction

        _no_grad_input(x, type(self).__name__)
        g, cache, device = geometry, self._kernel_cache(), x.device
        x = x.detach().cpu().float()
        if self.mode == "xnor":
            hw = (x.shape[2], x.shape[3])
            if hw not in cache:
                signs = self._signs().reshape(self.weight_shape)
                cache[hw] = (
                    padding_correction(signs, hw, g.stride, g.padding, g.dilation)
                    if any(g.padding)
                    else None
                )
            return binary_conv2d(x, self._words(), self.weight_shape, g.stride, g.padding,
                                 g.dilation, cache[hw], self.alpha, bias).to(device)  # fmt: skip
        if "rows" not in cache:  # unfold-order words, for BWN
            cache["rows"] = pack_signs(self._signs())
        cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)
        b, ck, n = cols.shape
        h, _ = conv_output_hw(x.shape[2:], g.kernel_size, g.stride, g.padding, g.dilation)
        y = self._gemm(cols.transpose(1, 2).reshape(b * n, ck), cache["rows"], bias)
        return y.reshape(b, h, n // h, -1).permute(0, 3, 1, 2).to(device)  # channels-last

    def to_dense(self) -> nn.Module:
        dense = super().to_dense()  # type: ignore[misc]
        return _SignThen(dense) if self.mode == "xnor" else dense

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        """The op with 1-bit weights (and 1-bit inputs in XNOR mode)."""
        op = plain_workload(name, super().to_dense(), inputs, output,  # type: ignore[misc]
                            params=self.param_count(), weight_bits=1,  # type: ignore[attr-defined]
                            weight_bytes=self.storage_bytes())  # type: ignore[attr-defined]  # fmt: skip
        return [dataclasses.replace(op, act_bits=1) if self.mode == "xnor" else op]


class _SignThen(nn.Module):
    """``layer(sign(x))`` with ``sign(0) = +1``: the dense equivalent of an XNOR layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.where(x < 0, -1.0, 1.0).to(x.dtype))


@register_layer
class BinaryLinear(BinaryFormat, CompressedLinear):
    """``y = α ⊙ (x·sign(W)ᵀ) + b`` with the signs packed 64 per word.

    ``mode="xnor"`` (XNOR-Net/BNN): the input is binarized too, ``sign(x)``, and the product is
    ``K − 2·popcount(x ⊕ w)``; ``mode="bwn"``: real inputs, additions and subtractions only.
    """


@register_layer
class BinaryConv2d(BinaryFormat, CompressedConv2d):
    """``conv2d`` with ``α ⊙ sign(W)`` weights (groups 1, zero padding), via packed im2col.

    ``mode="xnor"``: ``conv(sign x, sign W)`` exactly, the +1 padding bits removed by a cached
    correction; ``mode="bwn"``: real input columns, additions and subtractions only.
    """
