"""Bit-packing of sub-byte codes: ``n`` codes of ``b`` bits take ``ceil(n·b/8)`` bytes.

Codes are written least-significant bit first into one continuous bit stream, so any width from
1 to 16 packs without waste (3-bit codes: 8 codes in 3 bytes). Packing runs on the tensor's
device; :func:`unpack_bits` is its exact inverse.
"""

from __future__ import annotations

import math

import torch

from modelzip.core.errors import ConfigError

__all__ = ["pack_bits", "packed_bytes", "unpack_bits"]


def packed_bytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits occupy once packed."""
    return math.ceil(numel * bits / 8)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits={bits} is out of range; allowed [1, 16]")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (any shape, each ``< 2**bits``) into a uint8 vector."""
    _check_bits(bits)
    flat = codes.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ConfigError(f"codes must lie in [0, {2**bits - 1}] to pack them in {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8)
    shifts = torch.arange(bits, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).to(torch.uint8).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = (2 ** torch.arange(8, device=flat.device)).to(torch.uint8)
    return (stream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The first ``numel`` codes (int64) of a stream written by :func:`pack_bits`."""
    _check_bits(bits)
    if packed.numel() < packed_bytes(numel, bits):
        raise ConfigError(f"{packed.numel()} packed bytes cannot hold {numel} codes of {bits} bits")
    if bits == 8:
        return packed[:numel].long()
    stream = (packed.long()[:, None] >> torch.arange(8, device=packed.device)) & 1
    stream = stream.reshape(-1)[: numel * bits].reshape(numel, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(dim=1)
