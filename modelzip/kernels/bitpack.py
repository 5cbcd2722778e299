"""Bit packing: 64 binary values per ``uint64`` word, along the last (reduction) axis.

Convention: bit 1 stands for −1 and bit 0 for +1 (the sign bit), so ``sign(0) = +1``. A row of
``K`` values takes ``⌈K/64⌉`` words; the padding bits are 0 in every packed operand, so padded
positions always agree (XNOR = 1) and the kernels subtract them with the correction term
``dot = K − 2·popcount(a ⊕ b)`` (using the true ``K``, not ``64·words``).
Little-endian bit order: value ``k`` of a row is bit ``k mod 64`` of word ``k // 64``.
"""

from __future__ import annotations

import numpy as np
import torch

WORD_BITS = 64


def words_for(k: int) -> int:
    """Number of 64-bit words that hold ``k`` bits: ``⌈k / 64⌉``."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def words_tensor(words: np.ndarray) -> torch.Tensor:
    """Packed ``uint64`` words as an ``int64`` tensor (a copy): torch has no full uint64
    support, so the bits live in an int64 buffer and are viewed back with ``.view(np.uint64)``."""
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int64).copy())


def pack_bits(bits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pack a boolean array ``(..., K)`` into ``uint64`` words ``(..., ⌈K/64⌉)``; pad bits are 0."""
    b = _as_numpy(bits).astype(bool, copy=False)
    k = b.shape[-1]
    packed = np.packbits(b, axis=-1, bitorder="little")  # (..., ⌈K/8⌉) bytes
    pad = words_for(k) * 8 - packed.shape[-1]
    if pad:  # pad whole zero bytes after packing: 8× less data than padding the bits
        packed = np.concatenate(
            [packed, np.zeros((*packed.shape[:-1], pad), dtype=np.uint8)], axis=-1
        )
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: boolean array ``(..., k)``."""
    w = np.ascontiguousarray(words, dtype="<u8")
    bits = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :k].astype(bool)


def pack_signs(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pack ``sign(x)`` (``x < 0`` → bit 1 = −1, else bit 0 = +1) along the last axis."""
    return pack_bits(_as_numpy(x) < 0)


def unpack_signs(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``float32`` array of ±1, shape ``(..., k)``."""
    return np.where(unpack_bits(words, k), -1.0, 1.0).astype(np.float32)


def pack_planes(codes: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Bit planes of integer codes ``(..., K)`` (two's complement for negative codes):
    ``uint64`` array ``(bits, ..., ⌈K/64⌉)``, plane ``p`` holding bit ``p`` of every code."""
    c = _as_numpy(codes).astype(np.int64)
    return np.stack([pack_bits((c >> p) & 1) for p in range(bits)])
