"""Storage formats of a sparse weight, with the bytes they really take and exact round-trips.

* **CSR**: row pointers (int32), column indices (int16 when the matrix has fewer than 65,536
  columns, else int32) and the values: ``4(r+1) + (2|4)·nnz + 4·nnz`` bytes for float32.
* **Bitmask**: one bit per weight plus the values: ``n/8 + 4·nnz`` (modelzip's saved form of a
  masked layer, :mod:`modelzip.prune.masked`).
* **Relative index** (Han et al., "Deep Compression", ICLR 2016, Fig. 2): the nonzeros in order,
  each with the number of zeros skipped since the previous one in ``b`` bits (4 or 5 in the
  paper's setting; 8 for conv); a gap longer than ``2^b - 1`` zeros is bridged by a *padding
  zero* (an entry of value 0), which costs an entry. ``⌈entries·b/8⌉ + 4·entries`` bytes.

Every ``encode_*`` returns numpy arrays whose ``nbytes`` sum is the stored size, and the matching
``decode_*`` rebuilds the dense matrix exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


def _numpy(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().numpy()
    return np.asarray(weight)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A sparse matrix in one format: its arrays and what it decodes to."""

    format: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Stored bytes (the sum of the arrays' sizes)."""
        return int(sum(a.nbytes for a in self.arrays.values()))


def encode_csr(weight: torch.Tensor | np.ndarray) -> Encoded:
    """Compressed sparse rows of ``weight`` viewed as ``(out, fan_in)``."""
    w = _numpy(weight)
    m = w.reshape(w.shape[0], -1)
    rows, cols = np.nonzero(m)
    row_ptr = np.zeros(m.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=m.shape[0]), out=row_ptr[1:])
    col_type = np.int16 if m.shape[1] < 2**15 else np.int32
    arrays = {"row_ptr": row_ptr, "col": cols.astype(col_type), "values": m[rows, cols]}
    return Encoded("csr", tuple(w.shape), arrays)


def decode_csr(enc: Encoded) -> np.ndarray:
    a = enc.arrays
    rows_n = len(a["row_ptr"]) - 1
    out = np.zeros((rows_n, int(np.prod(enc.shape)) // max(rows_n, 1)), dtype=a["values"].dtype)
    rows = np.repeat(np.arange(rows_n), np.diff(a["row_ptr"]))
    out[rows, a["col"].astype(np.int64)] = a["values"]
    return out.reshape(enc.shape)


def encode_bitmask(weight: torch.Tensor | np.ndarray) -> Encoded:
    """One bit per weight (packed, big-endian in a byte) and the nonzero values in order."""
    w = _numpy(weight)
    flat = w.reshape(-1)
    nz = flat != 0
    return Encoded("bitmask", tuple(w.shape), {"bits": np.packbits(nz), "values": flat[nz]})


def decode_bitmask(enc: Encoded) -> np.ndarray:
    n = int(np.prod(enc.shape))
    nz = np.unpackbits(enc.arrays["bits"], count=n).astype(bool)
    out = np.zeros(n, dtype=enc.arrays["values"].dtype)
    out[nz] = enc.arrays["values"]
    return out.reshape(enc.shape)


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``codes`` (< 2**bits) into bytes, ``bits`` per code, most significant first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitplane = ((codes.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitplane.reshape(-1))


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    plane = np.unpackbits(packed, count=count * bits).reshape(count, bits).astype(np.uint32)
    return (plane << np.arange(bits - 1, -1, -1, dtype=np.uint32)).sum(axis=1)


def encode_relative(weight: torch.Tensor | np.ndarray, bits: int = 5) -> Encoded:
    """Deep Compression's relative indexing with ``bits``-bit gaps and padding zeros.

    Entries are taken in row-major order of the flattened weight. Each stores the number of zeros
    skipped since the previous entry (``0 .. 2^bits - 1``); where more zeros lie between two
    nonzeros, padding entries of value zero are inserted every ``2^bits`` positions.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits={bits!r} is out of range; allowed [1, 16]")
    w = _numpy(weight)
    flat = w.reshape(-1)
    pos = np.flatnonzero(flat)
    span = 1 << bits  # the farthest an entry can be from the previous one
    prev = np.concatenate([[-1], pos])[:-1]
    # Each nonzero ends a run: its padding zeros at prev + span·k (k = 1..f), then itself.
    fillers = (pos - prev - 1) // span
    run = fillers + 1
    run_start = np.cumsum(run) - run
    k = np.arange(int(run.sum())) - np.repeat(run_start, run) + 1
    entries = np.repeat(prev, run) + span * k
    entries[run_start + fillers] = pos
    gaps = np.diff(np.concatenate([[-1], entries])) - 1
    values = flat[entries]
    arrays = {"gaps": _pack_bits(gaps, bits), "values": values}
    return Encoded(f"relative{bits}", tuple(w.shape), arrays)


def decode_relative(enc: Encoded) -> np.ndarray:
    bits = int(enc.format.removeprefix("relative"))
    count = len(enc.arrays["values"])
    gaps = _unpack_bits(enc.arrays["gaps"], bits, count).astype(np.int64)
    positions = np.cumsum(gaps + 1) - 1
    out = np.zeros(int(np.prod(enc.shape)), dtype=enc.arrays["values"].dtype)
    out[positions] = enc.arrays["values"]
    return out.reshape(enc.shape)
