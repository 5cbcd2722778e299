"""Canonical Huffman coding: exact round-trips, near-entropy lengths, and refusal of bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.core.errors import DataError
from modelzip.joint import huffman


def _roundtrip(symbols: np.ndarray) -> bytes:
    data = huffman.encode(symbols)
    np.testing.assert_array_equal(huffman.decode(data), symbols.astype(np.int64))
    return data


@pytest.mark.parametrize(
    "symbols",
    [
        np.random.default_rng(0).integers(0, 64, 20_000),  # near uniform
        np.random.default_rng(1).geometric(0.3, 20_000) - 1,  # skewed
        np.full(1000, 7),  # one symbol
        np.array([3]),
        np.zeros(0, dtype=np.int64),  # empty
        np.array([0, 65535, 1, 65535]),  # a wide alphabet
    ],
    ids=["uniform", "skewed", "single-symbol", "one-value", "empty", "wide"],
)
def test_roundtrip(symbols):
    data = _roundtrip(symbols)
    # Header (count, alphabet), the length table, then the bits: nothing else is stored.
    alphabet = int(symbols.max()) + 1 if symbols.size else 0
    table = (5 * alphabet + 7) // 8  # 5 bits per code length
    assert len(data) == 8 + table + (huffman.encoded_bits(symbols) + 7) // 8


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=300))
def test_roundtrip_any_stream(values):
    _roundtrip(np.array(values, dtype=np.int64))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.95])
def test_within_one_bit_of_entropy(p):
    symbols = np.random.default_rng(2).geometric(p, 50_000) - 1
    mean_bits = huffman.encoded_bits(symbols) / symbols.size
    entropy = huffman.entropy_bits(symbols)
    assert entropy <= mean_bits <= entropy + 1


def test_skewed_stream_beats_fixed_width():
    symbols = np.random.default_rng(3).geometric(0.5, 10_000) - 1
    fixed = int(np.ceil(np.log2(symbols.max() + 1)))
    assert huffman.encoded_bits(symbols) < 0.6 * fixed * symbols.size


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = huffman.code_lengths(np.array([50, 20, 20, 5, 3, 1, 1, 0]))
    assert lengths[-1] == 0  # an unused symbol has no code
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True) if n]
    for i, a in enumerate(words):
        for j, b in enumerate(words):
            assert i == j or not b.startswith(a)
    # Canonical: shorter codes first, codes of one length consecutive in symbol order.
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    aligned = codes[order] << (int(lengths.max()) - lengths[order].astype(np.int64))
    assert (np.diff(aligned) > 0).all()


def test_length_limit_flattens_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    assert huffman.code_lengths(counts, 24).max() <= 24
    assert huffman.code_lengths(counts, 10).max() <= 10
    symbols = np.repeat(np.arange(len(fib)), np.minimum(fib, 3000))
    _roundtrip(symbols)


def test_bad_symbols_refused():
    with pytest.raises(DataError, match="integer"):
        huffman.encode(np.array([0.5]))
    with pytest.raises(DataError, match="lie in"):
        huffman.encode(np.array([-1]))


def _stream() -> bytes:
    return huffman.encode(np.random.default_rng(4).integers(0, 8, 500))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d[:5],  # header cut off
        lambda d: d[:10],  # table cut off
        lambda d: d[:-20],  # bitstream cut off
        lambda d: struct.pack("<II", 2**31, 8) + d[8:],  # count the stream cannot hold
        lambda d: struct.pack("<II", 500, 2**30) + d[8:],  # absurd alphabet
        lambda d: d[:8] + bytes([0b00001000, 0b01000010] * 2 + [0]) + d[13:],  # Kraft violated
        lambda d: d[:8] + bytes([0xFF] * 5) + d[13:],  # lengths 31, over the limit
        lambda d: struct.pack("<II", 1, 0),  # symbols declared, no code table
        lambda d: d + bytes(1000),  # bytes after the last symbol
    ],
    ids=["header", "table", "bits", "count", "alphabet", "kraft", "long", "no-table", "trailing"],
)
def test_malformed_streams_raise_data_error(corrupt):
    with pytest.raises(DataError):
        huffman.decode(corrupt(_stream()))


def test_incomplete_code_hitting_unused_pattern_raises():
    # Two symbols of length 2 leave the codes 10 and 11 unused; a stream of 1-bits hits them.
    data = struct.pack("<II", 4, 2) + bytes([0b00010000, 0b10000000]) + bytes([0xFF])
    with pytest.raises(DataError, match="corrupt"):
        huffman.decode(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 3))
def test_random_bytes_decode_or_raise_data_error(tail, alphabet_bits):
    # A plausible header (small count and alphabet) in front of random bytes.
    data = struct.pack("<II", len(tail), 1 << alphabet_bits) + tail
    try:
        out = huffman.decode(data)
    except DataError:
        return
    assert out.size == len(tail) and (out < 1 << alphabet_bits).all()
