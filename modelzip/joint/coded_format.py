"""Deep Compression's stored layer: Huffman-coded cluster indices and relative sparse indices.

A :class:`HuffmanLinear` / :class:`HuffmanConv2d` computes exactly what its shared-weight parent
(:mod:`modelzip.joint.weight_sharing`) computes; only its stored form differs. The kept weights
are listed in row-major order with Deep Compression's relative indices
(:func:`modelzip.prune.sparse_format.encode_relative`: each entry stores the zeros skipped since
the previous one in ``index_bits`` bits, a longer run is bridged by a padding entry). Two symbol
streams follow, each Huffman-coded (:mod:`modelzip.joint.huffman`):

* ``weight_stream``: per entry, ``1 + cluster index`` for a kept weight, ``0`` for a padding entry
  (the paper's "padding zero"; an extra symbol costs a Huffman code, not a bit per weight);
* ``index_stream``: per entry, the relative index (gap), ``0 .. 2^index_bits − 1``.

Beside them the layer stores its ``2^bits`` centroids and its bias (float32, or float16 when
built with ``value_dtype="float16"``). Those four tensors are all a saved file holds for the layer,
so the file's size is the compressed size. The index width is a trade-off under Huffman coding
(narrow indices need padding entries, wide ones longer codes); ``index_bits=None`` tries
:data:`INDEX_BITS_SEARCH` and keeps the width whose streams are smallest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

import modelzip.joint.huffman as huffman
from modelzip.core.errors import DataError
from modelzip.core.module import register_layer
from modelzip.joint.weight_sharing import SharedConv2d, SharedFormat, SharedLinear, shared_layer
from modelzip.prune.sparse_format import (
    Encoded,
    _pack_bits,
    _unpack_bits,
    decode_relative,
    encode_relative,
)

__all__ = ["HuffmanConv2d", "HuffmanFormat", "HuffmanLinear", "coded_layer", "layer_streams"]


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.tensor(np.frombuffer(data, dtype=np.uint8), dtype=torch.uint8)


def layer_streams(
    codes: torch.Tensor, mask: torch.Tensor, index_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(weight symbols, gap symbols)`` of a shared layer's kept weights (see module doc)."""
    symbols = np.where(
        mask.detach().cpu().numpy(), codes.detach().cpu().numpy().astype(np.int64) + 1, 0
    )
    enc = encode_relative(symbols, index_bits)
    values = enc.arrays["values"].astype(np.int64)
    gaps = _unpack_bits(enc.arrays["gaps"], index_bits, len(values)).astype(np.int64)
    return values, gaps


def decode_streams(
    values: np.ndarray, gaps: np.ndarray, shape: tuple[int, ...], bits: int, index_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`layer_streams`: ``(codes int32, mask bool)`` of the layer's shape."""
    if len(values) != len(gaps):
        raise DataError(f"{len(values)} weight symbols but {len(gaps)} relative indices")
    if len(values) and (values.max() > 1 << bits or gaps.max() >= 1 << index_bits):
        raise DataError("a coded symbol lies outside the layer's code or index range")
    if int((gaps + 1).sum()) > int(np.prod(shape)):
        raise DataError(f"relative indices run past the layer's {int(np.prod(shape))} weights")
    enc = Encoded(
        f"relative{index_bits}", shape, {"gaps": _pack_bits(gaps, index_bits), "values": values}
    )
    symbols = torch.from_numpy(decode_relative(enc))
    mask = symbols > 0
    return (symbols - 1).clamp_min(0).to(torch.int32), mask


#: Float formats a coded layer may store its codebook and bias in.
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Relative-index widths tried when the width is chosen per layer (``index_bits=None``).
INDEX_BITS_SEARCH = range(2, 11)


class HuffmanFormat(SharedFormat):
    """The shared-weight format stored as Huffman-coded streams (see the module doc).

    ``value_dtype`` is the float format of the stored codebook and bias. With ``float16`` the
    layer's own centroids and bias are rounded to float16 values when it is built, so the file
    still decodes to exactly this layer; train before coding, not after.
    """

    index_bits: int
    value_dtype: str

    def _init_format(
        self,
        weight_shape: tuple[int, ...],
        bits: int,
        index_bits: int = 5,
        value_dtype: str = "float32",
    ) -> None:
        super()._init_format(weight_shape, bits)
        self.index_bits, self.value_dtype = index_bits, value_dtype

    def format_spec(self) -> dict[str, Any]:
        return {**super().format_spec(), "index_bits": self.index_bits,
                "value_dtype": self.value_dtype}  # fmt: skip

    @classmethod
    def from_dense(
        cls, dense: nn.Module, config: Any, generator: torch.Generator | None = None
    ) -> Any:
        """Cluster ``dense`` as ``config`` (``bits``, ``init``, ``iterations``) says, then code it
        with ``config.index_bits``-bit relative indices (5 when the config has none)."""
        shared = shared_layer(dense, config, generator)
        index_bits = getattr(config, "index_bits", 5)
        return coded_layer(shared, index_bits, getattr(config, "value_dtype", "float32"))

    def _streams(self) -> tuple[bytes, bytes]:
        key = (self.codes._version, self.mask._version, self.codes.data_ptr())
        if getattr(self, "_streams_key", None) != key:
            values, gaps = layer_streams(self.codes, self.mask, self.index_bits)
            self._streams_cache = (huffman.encode(values), huffman.encode(gaps))
            self._streams_key = key
        return self._streams_cache

    def packed_state(self) -> dict[str, torch.Tensor]:
        weight_stream, index_stream = self._streams()
        dtype = VALUE_DTYPES[self.value_dtype]
        state = {
            "weight_stream": _bytes_tensor(weight_stream),
            "index_stream": _bytes_tensor(index_stream),
            "centroids": self.centroids.detach().to(dtype),
        }
        if self.bias is not None:
            state["bias"] = self.bias.detach().to(dtype)
        return state

    @torch.no_grad()
    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        values = huffman.decode(state["weight_stream"].cpu().numpy())
        gaps = huffman.decode(state["index_stream"].cpu().numpy())
        codes, mask = decode_streams(
            values, gaps, self.weight_shape, self.weight_bits, self.index_bits
        )
        device = self.codes.device
        self._set(codes.to(device), state["centroids"], mask.to(device), state.get("bias"))

    @torch.no_grad()
    def _round_values(self) -> None:
        dtype = VALUE_DTYPES[self.value_dtype]
        for p in (self.centroids, self.bias):
            if p is not None:
                p.copy_(p.to(dtype))

    def stream_stats(self) -> dict[str, float]:
        """Entries, padding entries, and the Huffman-coded bits per entry of each stream."""
        values, gaps = layer_streams(self.codes, self.mask, self.index_bits)
        n = max(len(values), 1)
        return {
            "entries": len(values),
            "padding": int((values == 0).sum()),
            "huffman_weight_bits": huffman.encoded_bits(values) / n,
            "huffman_index_bits": huffman.encoded_bits(gaps) / n,
            "weight_entropy": huffman.entropy_bits(values),
            "index_entropy": huffman.entropy_bits(gaps),
        }


_Coded = HuffmanFormat  # the name before the op/format split (joint.deep_compression)


@register_layer
class HuffmanLinear(HuffmanFormat, SharedLinear):
    """:class:`SharedLinear` stored as Huffman-coded codes and relative indices."""


@register_layer
class HuffmanConv2d(HuffmanFormat, SharedConv2d):
    """:class:`SharedConv2d` stored as Huffman-coded codes and relative indices."""


def best_index_bits(codes: torch.Tensor, mask: torch.Tensor) -> int:
    """The relative-index width (of :data:`INDEX_BITS_SEARCH`) whose two Huffman-coded streams
    are smallest: narrow indices need padding entries, wide ones longer codes."""

    def size(bits: int) -> int:
        values, gaps = layer_streams(codes, mask, bits)
        return len(huffman.encode(values)) + len(huffman.encode(gaps))

    return min(INDEX_BITS_SEARCH, key=size)


def coded_layer(
    shared: nn.Module, index_bits: int | None = 5, value_dtype: str = "float32"
) -> HuffmanLinear | HuffmanConv2d:
    """The Huffman-coded form of a shared-weight layer (same codes, mask; centroids and bias
    rounded to ``value_dtype``). ``index_bits=None`` picks the width that codes smallest."""
    if value_dtype not in VALUE_DTYPES:
        raise DataError(f"value_dtype={value_dtype!r} is not allowed; choose one of "
                        f"{list(VALUE_DTYPES)}")  # fmt: skip
    if not isinstance(shared, (SharedLinear, SharedConv2d)):
        raise TypeError(f"{type(shared).__name__} is not a shared-weight layer")
    if index_bits is None:
        index_bits = best_index_bits(shared.codes, shared.mask)
    cls = HuffmanLinear if isinstance(shared, SharedLinear) else HuffmanConv2d
    spec = {**shared.spec(), "index_bits": index_bits, "value_dtype": value_dtype}
    layer = cls.from_spec(spec).to(shared.centroids.device)
    layer._set(shared.codes, shared.centroids.detach(), shared.mask,
               None if shared.bias is None else shared.bias.detach())  # fmt: skip
    layer._round_values()
    return layer
