"""Executable binary layers: ``±α`` weights bit-packed, run by the kernels of this package.

One weight format, :class:`BinaryFormat` (sign bits packed 64 per word plus one ``α`` per output
row), mixed into the linear and conv ops of :mod:`modelzip.core.compressed`, with kernels of its
own for both: XNOR-popcount when the inputs are binarized too (``mode="xnor"``), BWN additions
and subtractions of real inputs otherwise (``mode="bwn"``). In XNOR mode the output may also be
scaled by XNOR-Net's activation scale (``act_scale``: ``β``, the mean ``|x|`` of each input row,
or the map ``K`` of a convolution), computed from the real input in float. Registered, so a
materialized model saves and loads like any other. Inference only: the kernels have no backward,
so these layers refuse to run with autograd on their inputs.
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


#: On an XNOR convolution linked by :mod:`modelzip.kernels.xnor_inputs`: ``(pool, clamp)``, the
#: 2×2 max pool and hardtanh before it that it applies to its input itself.
READS_ATTR = "_modelzip_xnor_reads"


def binary_scales(weight: torch.Tensor) -> torch.Tensor | None:
    """``α`` per output row when every weight of row ``k`` is ``±α_k`` (``α_k > 0``), else None."""
    w = weight.detach().reshape(weight.shape[0], -1).float()
    alpha = w.abs().amax(dim=1)
    if bool((alpha == 0).any()) or not bool((w.abs() == alpha[:, None]).all()):
        return None
    return alpha


def xnor_input_scale(x: torch.Tensor, geometry: ConvGeometry | None) -> torch.Tensor:
    """XNOR-Net's activation scale (Rastegari et al. 2016, Sec. 3.2) of the real input ``x``.

    For a linear layer ``β``: the mean ``|x|`` over the input features, one per row (shape
    ``(..., 1)``). For a convolution the map ``K = A ⊛ k``: ``A`` the mean ``|x|`` over the input
    channels, ``k`` the ``kh × kw`` box filter ``1/(kh·kw)`` with the layer's stride, zero padding
    and dilation (shape ``(B, 1, OH, OW)``). The output of ``sign(x) ⊛ α·sign(W)`` is multiplied
    by it. The box sum is divided after summing, so ``K`` of a ±1 input is exactly 1.
    """
    if geometry is None:
        return x.abs().mean(-1, keepdim=True)
    a = x.abs().mean(1, keepdim=True)
    (kh, kw), g = geometry.kernel_size, geometry
    if isinstance(g.padding, str):
        box = torch.ones(1, 1, kh, kw, dtype=a.dtype, device=a.device)
        return F.conv2d(a, box, None, g.stride, g.padding, g.dilation) / float(kh * kw)
    # The box filter as two strided window sums (rows, then columns): on LeNet-5's conv2 at
    # batch 64 about 5× faster than a one-channel F.conv2d, which oneDNN runs poorly.
    (ph, pw), (sh, sw), (dh, dw) = g.padding, g.stride, g.dilation
    a = F.pad(a[:, 0], (pw, pw, ph, ph)) if ph or pw else a[:, 0]
    rows = a.unfold(1, dh * (kh - 1) + 1, sh)[..., ::dh].sum(-1)
    box_sum = rows.unfold(2, dw * (kw - 1) + 1, sw)[..., ::dw].sum(-1)
    return (box_sum / float(kh * kw)).unsqueeze(1)


def _no_grad_input(x: torch.Tensor, name: str) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError(f"{name} is an inference kernel; run it under torch.no_grad()")


class BinaryFormat(WeightFormat):
    """Storage: ``sign(W)`` packed 64 per ``int64`` word (``words``) and ``α`` per output row.

    A linear weight's rows are packed as they are; a conv weight's in the tap layout of the
    packed im2col (``(ky, kx)`` major, the channels of each tap packed into whole words).
    ``act_scale`` (XNOR mode only; in the spec only when on, so files written before it load
    unchanged) multiplies the output by :func:`xnor_input_scale` of the input before the bias.
    """

    onnx_export = (
        "refused: it runs a bit-packed XNOR/popcount kernel that ONNX has no operator for; "
        "export the model before converting it to kernel layers"
    )
    weight_bits = 1
    words: torch.Tensor
    alpha: torch.Tensor

    def _init_format(
        self, weight_shape: tuple[int, ...], mode: str = "bwn", act_scale: bool = False
    ) -> None:
        if mode not in BINARY_MODES:
            raise ValueError(f"mode={mode!r}: binary layers run {BINARY_MODES}")
        if act_scale and mode != "xnor":
            # BWN keeps its real inputs: there is no binarized input to rescale.
            raise ValueError("act_scale (XNOR-Net's β / K) needs mode='xnor'")
        self.weight_shape, self.mode, self.act_scale = tuple(weight_shape), mode, bool(act_scale)
        rows, self.k = weight_shape[0], math.prod(weight_shape[1:])
        taps = math.prod(weight_shape[2:])  # 1 for a linear weight
        n_words = taps * words_for(weight_shape[1])
        self.register_buffer("words", torch.zeros(rows, n_words, dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(rows))

    def format_spec(self) -> dict[str, Any]:
        # Written only when on: the specs (and files) of layers without it stay as they were.
        return {"mode": self.mode, **({"act_scale": True} if self.act_scale else {})}

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None, act_scale: bool = False) -> Any:
        """From a layer whose rows are ``±α``; ``config`` is the mode (or has a ``mode``);
        ``act_scale``: scale the output by XNOR-Net's ``β``/``K`` (XNOR mode)."""
        if isinstance(dense, nn.Conv2d) and (dense.groups != 1 or isinstance(dense.padding, str)):
            raise ValueError("binary convolution needs groups=1 and numeric zero padding")
        alpha = binary_scales(dense.weight)
        if alpha is None:
            raise ValueError("weights are not ±α per output channel; binarize the layer first")
        mode = getattr(config, "mode", config if isinstance(config, str) else "bwn")
        layer = cls.like(dense, mode=mode, act_scale=act_scale)  # type: ignore[attr-defined]
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

    def _bwn_gemm(
        self, x2: torch.Tensor, words: np.ndarray, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``α ⊙ (x2 (n × K) · sign(W)ᵀ) + b`` from row-packed ``words``: BWN adds and
        subtracts of the real inputs."""
        from modelzip.kernels.binary import bwn_gemm

        y = torch.from_numpy(bwn_gemm(x2.float().numpy(), words, self.k))
        y.mul_(self.alpha.detach().cpu())
        return y if bias is None else y.add_(bias.detach().cpu())

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        _no_grad_input(x, type(self).__name__)
        x2 = x.detach().reshape(-1, self.k).cpu()
        if self.mode == "xnor":
            from modelzip.kernels.binary import sign_pack_rows, xnor_gemm_affine

            # With act_scale: ((sign x · sign W)·α)·β + b, β the mean |x| of each row, from
            # the same pass that packs the signs.
            signs, rows = sign_pack_rows(x2, abs_mean=self.act_scale)
            alpha, beta = self._affine(bias)
            y = torch.from_numpy(xnor_gemm_affine(signs, self._words(), self.k, alpha, beta,
                                                  None, rows))  # fmt: skip
        else:
            y = self._bwn_gemm(x2, self._words(), bias)
        return y.reshape(*x.shape[:-1], self.weight_shape[0]).to(x.device)

    def _affine(self, bias: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """``α`` and the bias (zeros without one) as float32 arrays, kept with the kernel cache
        until the bias changes."""
        stamp = None if bias is None else (id(bias), bias._version)
        hit = self._kernel_cache().get("affine")
        if hit is None or hit[0] != stamp:
            alpha = self.alpha.detach().cpu().float().numpy().copy()
            beta = np.zeros_like(alpha) if bias is None else bias.detach().cpu().float().numpy()
            hit = self._kernel_cache()["affine"] = (stamp, alpha, beta.copy())
        return hit[1], hit[2]

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        from modelzip.kernels.binary import (
            binary_conv2d,
            conv_output_hw,
            pack_conv_rows,
            padding_correction,
        )

        _no_grad_input(x, type(self).__name__)
        g, cache, device = geometry, self._kernel_cache(), x.device
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        x = x.detach().cpu().float()
        if self.mode == "xnor":
            # Linked (modelzip.kernels.xnor_inputs): x is the input of the 2×2 max pool and/or
            # hardtanh before this layer, which the packing pass applies itself.
            pool, clamp = self.__dict__.get(READS_ATTR, (False, False))
            hw = (x.shape[2] // 2, x.shape[3] // 2) if pool else (x.shape[2], x.shape[3])
            if hw not in cache:
                signs = self._signs().reshape(self.weight_shape)
                cache[hw] = (
                    padding_correction(signs, hw, g.stride, g.padding, g.dilation)
                    if any(g.padding)
                    else None
                )
            if "stream" not in cache:  # the bit-stream rows of the fused im2col
                cache["stream"] = pack_conv_rows(self._signs().reshape(self.weight_shape))
            y = binary_conv2d(x, cache["stream"], self.weight_shape, g.stride, g.padding,
                              g.dilation, cache[hw], self.alpha, bias,
                              act_scale=self.act_scale, pool=pool, clamp=clamp)  # fmt: skip
            # The kernel's rows are pixels: its output is channels-last already. Kept so for a
            # channels-last input (a model deployed in that layout: its next op, a max-pool on
            # LeNet-5, ran 5× slower on NCHW), made NCHW-contiguous otherwise.
            return (y if channels_last else y.contiguous()).to(device)
        if "rows" not in cache:  # unfold-order words, for BWN
            cache["rows"] = pack_signs(self._signs())
        cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)
        b, ck, n = cols.shape
        h, _ = conv_output_hw(x.shape[2:], g.kernel_size, g.stride, g.padding, g.dilation)
        y = self._bwn_gemm(cols.transpose(1, 2).reshape(b * n, ck), cache["rows"], bias)
        return y.reshape(b, h, n // h, -1).permute(0, 3, 1, 2).to(device)  # channels-last

    def to_dense(self) -> nn.Module:
        dense = super().to_dense()  # type: ignore[misc]
        return SignThen(dense, self.act_scale) if self.mode == "xnor" else dense

    def workloads(self, name: str, inputs: tuple[Any, ...], output: Any) -> list[Workload]:
        """The op with 1-bit weights (and 1-bit inputs in XNOR mode)."""
        op = plain_workload(name, super().to_dense(), inputs, output,  # type: ignore[misc]
                            params=self.param_count(), weight_bits=1,  # type: ignore[attr-defined]
                            weight_bytes=self.storage_bytes())  # type: ignore[attr-defined]  # fmt: skip
        return [dataclasses.replace(op, act_bits=1) if self.mode == "xnor" else op]


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` with ``sign(0) = +1`` (the kernels' bit convention), in ``x``'s dtype."""
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


class SignThen(nn.Module):
    """``layer(sign(x))`` with ``sign(0) = +1``: the dense equivalent of an XNOR layer.

    With ``scale_inputs`` (XNOR-Net's ``β``/``K``), ``layer(sign x) ⊙ xnor_input_scale(x) + b``:
    the layer's bias moves to this module (``bias``), since it is added after the scale.
    """

    bias: nn.Parameter | None

    def __init__(self, layer: nn.Module, scale_inputs: bool = False) -> None:
        super().__init__()
        self.scale_inputs = bool(scale_inputs)
        self.geometry = ConvGeometry.of(layer) if isinstance(layer, nn.Conv2d) else None
        bias = getattr(layer, "bias", None) if self.scale_inputs else None
        if bias is not None:
            layer.bias = None  # type: ignore[assignment]  # unregisters it from the layer
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(sign_pm1(x))
        if not self.scale_inputs:
            return y
        y = y * xnor_input_scale(x, self.geometry)
        if self.bias is None:
            return y
        return y + (self.bias if self.geometry is None else self.bias.reshape(1, -1, 1, 1))


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
