"""Canonical Huffman coding of integer symbol streams (Deep Compression's last stage).

Han et al. ("Deep Compression", ICLR 2016, Section 4) Huffman-code the quantized weight codes and
the relative sparse indices: both are far from uniform (the codes peak near the centre of the
weight distribution, the gaps are short), so a variable-length code saves another 20-30%.

Written by hand because no well-kept Python library does canonical Huffman over numpy arrays with
a compact serialized code table (``heapq`` builds the tree; the bit packing is numpy's).

Serialized form (little-endian), whose byte count is what a layer stores::

    uint32 count        symbols in the stream
    uint32 alphabet     size of the code-length table (largest symbol + 1)
    lengths             5 bits per symbol (its code length, 0 if it does not occur), most
                        significant bit first, zero-padded to a byte: ⌈5·alphabet/8⌉ bytes
    bits                canonical codes, most significant bit first, zero-padded to a byte

Only the code lengths are stored: canonical codes follow from them (codes of one length are
consecutive integers, shorter codes come first, ties in symbol order), which is also what makes
table decoding possible. Code lengths are limited to :data:`MAX_CODE_LENGTH` bits; a stream whose
optimal code is longer (only for extremely skewed counts, Fibonacci-like) is coded after halving
its counts until the limit holds, which costs a little compression and nothing else.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from modelzip.core.errors import DataError

__all__ = [
    "MAX_CODE_LENGTH",
    "MAX_SYMBOLS",
    "canonical_codes",
    "code_lengths",
    "decode",
    "encode",
    "encoded_bits",
    "entropy_bits",
]

MAX_CODE_LENGTH = 24
#: Largest alphabet accepted; with at most 2^20 symbols, equal counts give lengths <= 20, so the
#: count-halving fallback always reaches the 24-bit limit.
MAX_SYMBOLS = 1 << 20
_HEADER = struct.Struct("<II")
#: Bits per entry of the stored code-length table (lengths are at most 24 < 2^5).
_LENGTH_BITS = 5
#: Bits decoded per vectorised pass, bounding the decoder's temporaries.
_CHUNK_BITS = 1 << 20


def _lengths_unlimited(counts: np.ndarray) -> np.ndarray:
    """Optimal (unlimited) code lengths of the symbols with nonzero count; 0 elsewhere."""
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used] = 1  # one symbol still needs one bit per occurrence to be counted
        return lengths
    # Heap of (count, node); merging two nodes makes a parent one level above them. A leaf's
    # code length is its depth, found by walking parents from the root down in creation order.
    m = len(used)
    parent = np.zeros(2 * m - 1, dtype=np.int64)
    heap = [(int(counts[s]), i) for i, s in enumerate(used)]
    heapq.heapify(heap)
    node = m
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node))
        node += 1
    depth = np.zeros(2 * m - 1, dtype=np.int64)
    for n in range(2 * m - 3, -1, -1):  # the root (last node) has depth 0
        depth[n] = depth[parent[n]] + 1
    lengths[used] = depth[:m]
    return lengths


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths (uint8) for symbol ``counts``, none longer than ``max_length``.

    Symbols with count 0 get length 0 (no code). Above the limit, the counts are halved (keeping
    every used symbol at least 1) and the code rebuilt, which flattens the tree.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise DataError("symbol counts must be a 1-d array of non-negative integers")
    if len(counts) > MAX_SYMBOLS:
        raise DataError(f"alphabet of {len(counts)} symbols exceeds the limit {MAX_SYMBOLS}")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise DataError(f"max_length={max_length} is out of range; allowed [1, 24]")
    if np.count_nonzero(counts) > 1 << max_length:
        raise DataError(f"{np.count_nonzero(counts)} symbols cannot have codes of <= {max_length}")
    lengths = _lengths_unlimited(counts)
    while lengths.max(initial=0) > max_length:
        counts = np.where(counts > 0, np.maximum(counts // 2, 1), 0)
        lengths = _lengths_unlimited(counts)
    return lengths.astype(np.uint8)


def _canonical_tables(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per length ``l``: the first canonical code, the number of codes, and the symbols sorted by
    (length, symbol) that the codes of each length index into."""
    max_len = int(lengths.max(initial=0))
    count = np.bincount(lengths, minlength=max_len + 1).astype(np.int64)
    count[0] = 0
    first = np.zeros(max_len + 2, dtype=np.int64)
    code = 0
    for length in range(1, max_len + 1):
        code = (code + count[length - 1]) << 1
        first[length] = code
    symbols = np.lexsort((np.arange(len(lengths)), lengths))
    symbols = symbols[lengths[symbols] > 0]
    return first, count, symbols


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (int64; meaningless where the length is 0)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    first, count, symbols = _canonical_tables(lengths)
    codes = np.zeros(len(lengths), dtype=np.int64)
    sorted_lengths = lengths[symbols]
    # Rank of each symbol among those of its length, then offset by the length's first code.
    start = np.concatenate([[0], np.cumsum(count)])[sorted_lengths] if len(symbols) else []
    rank = np.arange(len(symbols)) - np.asarray(start, dtype=np.int64)
    codes[symbols] = first[sorted_lengths] + rank
    return codes


def _check_symbols(symbols: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.dtype.kind not in "iu":
        raise DataError(f"Huffman coding needs integer symbols, got {symbols.dtype}")
    symbols = symbols.reshape(-1).astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= MAX_SYMBOLS):
        raise DataError(f"symbols must lie in [0, {MAX_SYMBOLS - 1}]")
    if symbols.size >= 1 << 32:
        raise DataError(f"{symbols.size} symbols exceed the format's 2^32 - 1")
    return symbols


def encode(symbols: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> bytes:
    """The serialized Huffman coding of a stream of non-negative integers (see module doc)."""
    symbols = _check_symbols(symbols)
    counts = np.bincount(symbols) if symbols.size else np.zeros(0, dtype=np.int64)
    lengths = code_lengths(counts, max_length)
    header = _HEADER.pack(symbols.size, len(lengths)) + _pack_lengths(lengths)
    if not symbols.size:
        return header
    codes, lens = canonical_codes(lengths)[symbols], lengths[symbols].astype(np.int64)
    # Bit j (from the most significant) of each code, laid out in a (symbols, max length) grid
    # whose valid cells, read in row order, are the bitstream.
    width = int(lens.max())
    j = np.arange(width)
    shift = lens[:, None] - 1 - j
    valid = shift >= 0
    bits = (codes[:, None] >> np.where(valid, shift, 0)) & 1
    return header + np.packbits(bits[valid].astype(np.uint8)).tobytes()


def encoded_bits(symbols: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> int:
    """Bits of the coded stream alone (no header): ``Σ length(symbol)``."""
    symbols = _check_symbols(symbols)
    if not symbols.size:
        return 0
    lengths = code_lengths(np.bincount(symbols), max_length)
    return int(lengths[symbols].astype(np.int64).sum())


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of the stream in bits per symbol (the bound Huffman is within 1 of)."""
    symbols = _check_symbols(symbols)
    if not symbols.size:
        return 0.0
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _pack_lengths(lengths: np.ndarray) -> bytes:
    planes = np.unpackbits(lengths.astype(np.uint8)[:, None], axis=1)[:, 8 - _LENGTH_BITS :]
    return np.packbits(planes.reshape(-1)).tobytes()


def _unpack_lengths(table: np.ndarray, alphabet: int) -> np.ndarray:
    planes = np.unpackbits(table, count=alphabet * _LENGTH_BITS).reshape(alphabet, _LENGTH_BITS)
    return planes.astype(np.int64) @ (1 << np.arange(_LENGTH_BITS - 1, -1, -1))


def _parse(data: bytes | np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    buf = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    if buf.size < _HEADER.size:
        raise DataError(f"Huffman stream of {buf.size} bytes is shorter than its 8-byte header")
    count, alphabet = _HEADER.unpack(buf[: _HEADER.size].tobytes())
    if alphabet > MAX_SYMBOLS:
        raise DataError(f"Huffman table declares {alphabet} symbols; the limit is {MAX_SYMBOLS}")
    body = _HEADER.size + (alphabet * _LENGTH_BITS + 7) // 8
    if buf.size < body:
        raise DataError(f"Huffman table of {alphabet} symbols is cut off at {buf.size} bytes")
    lengths = _unpack_lengths(buf[_HEADER.size : body], alphabet)
    if lengths.size and lengths.max() > MAX_CODE_LENGTH:
        raise DataError(f"Huffman code length {lengths.max()} exceeds {MAX_CODE_LENGTH}")
    used = lengths[lengths > 0]
    # Kraft's inequality: a prefix code's lengths satisfy Σ 2^-l <= 1 (exact integers).
    if int((np.int64(1) << (MAX_CODE_LENGTH - used)).sum()) > 1 << MAX_CODE_LENGTH:
        raise DataError("Huffman code lengths violate Kraft's inequality (not a prefix code)")
    stream = buf[body:]
    if count and not used.size:
        raise DataError(f"Huffman stream declares {count} symbols but its code table is empty")
    # Every symbol takes at least the shortest code length: a count beyond what the stream can
    # hold is refused before anything is allocated for it.
    if count and count * int(used.min()) > 8 * stream.size:
        raise DataError(
            f"Huffman stream declares {count} symbols but has only {8 * stream.size} bits"
        )
    return count, lengths, stream


def decode(data: bytes | np.ndarray) -> np.ndarray:
    """The symbols (int64) of a stream written by :func:`encode`.

    Raises :class:`~modelzip.core.errors.DataError` on a malformed table or stream. Decoding is by
    table on the canonical codes: at every bit position the code starting there is found (one
    vectorised pass per code length), then the chain of code starts is followed from bit 0.
    Only the first ``count · longest code`` bits are looked at, and memory is bounded by them:
    about 50 bytes per stored byte, plus fixed-size chunk buffers.
    """
    count, lengths, stream = _parse(data)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    first, per_length, symbols = _canonical_tables(lengths)
    max_len = len(first) - 2
    offset = np.concatenate([[0], np.cumsum(per_length)])  # index into symbols, per length
    total = min(8 * stream.size, count * max_len)
    padded = np.concatenate([np.unpackbits(stream, count=total), np.zeros(max_len, dtype=np.uint8)])
    code_len = np.zeros(total, dtype=np.uint8)
    code_sym = np.zeros(total, dtype=np.int32)
    for lo in range(0, total, _CHUNK_BITS):
        hi = min(total, lo + _CHUNK_BITS)
        window = np.zeros(hi - lo, dtype=np.int64)
        found = np.zeros(hi - lo, dtype=bool)
        for length in range(1, max_len + 1):
            window = (window << 1) | padded[lo + length - 1 : hi + length - 1].astype(np.int64)
            if not per_length[length]:
                continue
            rank = window - first[length]
            hit = ~found & (rank >= 0) & (rank < per_length[length])
            code_len[lo:hi][hit] = length
            code_sym[lo:hi][hit] = symbols[offset[length] + rank[hit]]
            found |= hit
    # Follow the chain of code starts (sequential by nature; one step per symbol).
    lens_list = memoryview(code_len)  # indexing gives Python ints, without a copy
    starts = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        if pos >= total or not lens_list[pos]:
            raise DataError(f"Huffman bitstream is corrupt or cut off at symbol {i} of {count}")
        starts[i] = pos
        pos += lens_list[pos]
    if pos > total:
        raise DataError(f"Huffman bitstream is cut off in its last symbol ({pos} > {total} bits)")
    if (pos + 7) // 8 != stream.size:
        raise DataError(
            f"Huffman bitstream has {stream.size - (pos + 7) // 8} bytes after its last symbol"
        )
    return code_sym[starts].astype(np.int64)
