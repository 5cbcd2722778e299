"""A fake-quantized linear layer (k-bit weights, k-bit PACT inputs) run as a bit-serial GEMM.

A :class:`~modelzip.quantize.fake.FakeQuantLinear` with quantized inputs computes
``y = W_q · x_q + b`` in float, where every row of ``W_q`` lies on a uniform grid
(``W_q[o, i] = m_o + Δ_o·c_{oi}`` with integer codes ``c``; uniform, DoReFa, ternary and binary
weights all do) and ``x_q = s·a`` with PACT codes ``a ∈ [0, 2^k − 1]``, ``s = α / (2^k − 1)``.
Then

    ``y_o = s·(Δ_o·Σ_i c_{oi}·a_i + m_o·Σ_i a_i) + b_o``

and ``Σ c·a`` is an exact integer product of unsigned codes: the bit-serial AND-popcount GEMM of
:mod:`modelzip.kernels.bitserial` over ``b_w × k`` plane pairs. The weight planes are packed once
here; the inputs are quantized and packed on every call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.core.compressed import CompressedLinear, WeightFormat
from modelzip.core.module import register_layer
from modelzip.kernels.bitpack import pack_planes, words_for, words_tensor
from modelzip.kernels.bitserial import bitserial_gemm_packed, plane_weights

#: Widest codes the layer takes (the kernel's cost grows with weight bits × input bits).
MAX_BITS = 8


def grid_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
    """``(codes, offset, step, bits)`` with ``w[o] = offset[o] + step[o]·codes[o]`` exactly (to
    float rounding) and unsigned codes of at most :data:`MAX_BITS` bits; None when some row is
    not on a uniform grid that small."""
    w = w.detach().double().reshape(w.shape[0], -1)
    offset = w.amin(dim=1)
    step = torch.ones_like(offset)
    for o in range(w.shape[0]):
        levels = torch.unique(w[o])
        if len(levels) > 1:
            step[o] = (levels[1:] - levels[:-1]).min()
    codes = torch.round((w - offset[:, None]) / step[:, None])
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    if ((offset[:, None] + step[:, None] * codes - w).abs() > 1e-5 * scale).any():
        return None
    top = int(codes.max()) if codes.numel() else 0
    bits = max(1, math.ceil(math.log2(top + 1)))
    if bits > MAX_BITS:
        return None
    return codes.long(), offset.float(), step.float(), bits


@register_layer
class BitSerialLinear(WeightFormat, CompressedLinear):
    """``y = s·(Δ ⊙ (A·Cᵀ) + m·Σa) + b`` with ``A·Cᵀ`` a bit-serial GEMM of unsigned codes;
    built by :meth:`from_fake_quant`. Inference only (CPU kernel).

    Its weight format: the codes as ``weight_bits`` packed bit planes and each row's grid
    (``offset``, ``step``); ``alpha`` is the PACT clip of the inputs."""

    onnx_export = (
        "refused: it runs a bit-serial AND-popcount kernel that ONNX has no operator for; export "
        "the model before materializing it"
    )

    def _init_format(self, weight_shape: tuple[int, ...], weight_bits: int, act_bits: int) -> None:
        if not 1 <= weight_bits <= MAX_BITS or not 1 <= act_bits <= MAX_BITS:
            raise ValueError(
                f"weight_bits={weight_bits}, act_bits={act_bits}: each must be in [1, {MAX_BITS}]"
            )
        self.weight_shape, self.weight_bits, self.act_bits = weight_shape, weight_bits, act_bits
        words = words_for(self.in_features)
        planes = torch.zeros(weight_bits, self.out_features, words, dtype=torch.long)
        self.register_buffer("planes", planes)
        self.register_buffer("offset", torch.zeros(self.out_features))
        self.register_buffer("step", torch.ones(self.out_features))
        self.register_buffer("alpha", torch.ones(()))

    def format_spec(self) -> dict[str, Any]:
        return {"weight_bits": self.weight_bits, "act_bits": self.act_bits}

    @classmethod
    def from_fake_quant(cls, layer: nn.Module) -> BitSerialLinear:
        """From a ``FakeQuantLinear`` with PACT inputs of at most 8 bits and grid weights."""
        act = getattr(layer, "act", None)
        if act is None or not 1 <= int(act.bits) <= MAX_BITS:
            raise ValueError("bit-serial execution needs quantized inputs (act_bits 1..8)")
        grid = grid_codes(layer.quantized_weight())
        if grid is None:
            raise ValueError(f"weights are not on a uniform grid of at most {MAX_BITS} bits")
        codes, offset, step, bits = grid
        new = cls.like(layer, weight_bits=bits, act_bits=int(act.bits))
        with torch.no_grad():
            new.planes.copy_(words_tensor(pack_planes(codes, bits)))
            new.offset.copy_(offset)
            new.step.copy_(step)
            new.alpha.copy_(act.alpha.detach().abs() + 1e-6)  # PACT's clip, as its forward uses
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        return new

    @classmethod
    def from_dense(cls, dense: nn.Module, config: Any = None) -> BitSerialLinear:
        raise NotImplementedError(
            "BitSerialLinear is an executable form of a FakeQuantLinear with quantized inputs; "
            "build it with from_fake_quant(layer) (materialize() does)"
        )

    def codes(self) -> torch.Tensor:
        """The unsigned weight codes ``(out, in)``."""
        bits = np.unpackbits(
            self.planes.numpy().view(np.uint64).view(np.uint8), axis=-1, bitorder="little"
        )[..., : self.in_features].astype(np.int64)
        weights = plane_weights(self.weight_bits, signed=False)
        return torch.from_numpy(np.tensordot(weights, bits, axes=(0, 0)))

    def decode_weight(self) -> torch.Tensor:
        """The grid weight (the input quantization is not part of ``nn.Linear``)."""
        return self.offset[:, None] + self.step[:, None] * self.codes().float()

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("BitSerialLinear is an inference kernel; run it under no_grad()")
        lead, device = x.shape[:-1], x.device
        x2 = x.detach().reshape(-1, self.in_features).float().cpu()
        n = 2**self.act_bits - 1
        alpha = self.alpha.float()
        # PACT's own arithmetic, so that the codes are the ones the fake-quantized layer used.
        a = torch.round(torch.minimum(x2.clamp_min(0), alpha) * n / alpha).long()
        acc = bitserial_gemm_packed(
            pack_planes(a, self.act_bits),
            self.planes.numpy().view(np.uint64),
            plane_weights(self.act_bits, signed=False),
            plane_weights(self.weight_bits, signed=False),
        )
        s = alpha / n
        y = s * (
            self.step * torch.from_numpy(acc).float()
            + self.offset * a.sum(dim=1, keepdim=True).float()
        )
        if bias is not None:
            y = y + bias.detach()
        return y.reshape(*lead, self.out_features).to(device)


__all__ = ["MAX_BITS", "BitSerialLinear", "grid_codes"]
