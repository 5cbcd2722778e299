"""Deep Compression end to end (Han, Mao, Dally, ICLR 2016): prune, share weights, Huffman-code.

The three stages, each followed by retraining in the paper:

1. **Pruning** (Han et al. 2015): the smallest-magnitude weights of each layer are removed
   (:mod:`modelzip.prune.magnitude`) and the rest retrained under the mask.
2. **Quantization by weight sharing**: the kept weights of each layer are clustered into ``2^b``
   centroids (:mod:`modelzip.joint.weight_sharing`) and the centroids fine-tuned with the summed
   gradients of their weights.
3. **Huffman coding** of the cluster indices and of the relative sparse indices
   (:mod:`modelzip.joint.coded_format`); lossless, no retraining.

:func:`deep_compression` runs all three and saves the model with :func:`modelzip.save`; the file's
size on disk is the size it reports. :func:`breakdown` gives the bytes after each stage, computed
from the final model's own tensors. The ``deep_compression`` method does the three stages on one
layer without retraining (for recipes).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.context import Context, layer_name
from modelzip.core.errors import ConfigError
from modelzip.core.registry import register_method
from modelzip.core.selection import Select
from modelzip.joint.coded_format import INDEX_BITS_SEARCH, _Coded, coded_layer
from modelzip.joint.weight_sharing import (
    Init,
    WeightSharingConfig,
    _Shared,
    dense_source,
    shared_layer,
    sharing_note,
)
from modelzip.prune.magnitude import magnitude_mask

__all__ = [
    "DeepCompressionConfig",
    "DeepCompressionResult",
    "breakdown",
    "deep_compression",
    "quantize_and_code",
    "relative_entries",
    "saved_size",
    "share",
    "to_coded",
]


@dataclasses.dataclass(frozen=True)
class DeepCompressionConfig(MethodConfig):
    """Prune, share weights by k-means and Huffman-code one layer (Deep Compression, no retraining).

    Parameters
    ----------
    sparsity:
        Fraction of the layer's weights removed by magnitude, in [0, 1).
    bits:
        Bits of a cluster index (``2^bits`` centroids), 1-16.
    index_bits:
        Bits of a relative sparse index before Huffman coding, 1-16 (the paper: 5 for LeNet), or
        None for the width whose coded streams are smallest.
    init, iterations:
        k-means centroid initialization and Lloyd iterations (see ``weight_sharing``).
    value_dtype:
        Stored float format of the codebook and bias (``float16`` rounds them once, and the
        layer computes with the rounded values).
    """

    method = "deep_compression"
    sparsity: float = 0.9
    bits: int = 5
    index_bits: int | None = 5
    init: Init = "linear"
    iterations: int = 30
    value_dtype: Literal["float32", "float16"] = "float32"

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, high_open=True)
        check_range(self, "bits", 1, 16)
        check_range(self, "index_bits", 1, 16)
        check_range(self, "iterations", 0, 10_000)


def _pruned_copy(dense: nn.Module, sparsity: float) -> nn.Module:
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        # Zeros already there stay pruned; pruning again only adds to them.
        pruned.weight.mul_(magnitude_mask(pruned.weight, sparsity) & (pruned.weight != 0))
    return pruned


@register_method(
    DeepCompressionConfig,
    family="joint",
    example=DeepCompressionConfig(sparsity=0.9, bits=4),
)
def deep_compression_layer(
    module: nn.Module, config: DeepCompressionConfig, ctx: Context
) -> nn.Module:
    """Deep Compression of one layer: magnitude pruning, k-means sharing, Huffman coding."""
    dense = _pruned_copy(dense_source(module), config.sparsity)
    weight = dense.weight
    generator = ctx.generator(weight.device) if config.init == "random" else None
    layer = coded_layer(
        shared_layer(dense, config, generator), config.index_bits, config.value_dtype
    )
    ctx.note(layer_name(module, ctx), sharing_note(layer, dense))
    return layer


def _per_layer(value: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(names)
        if unknown:
            raise ConfigError(f"no selected layer named {sorted(unknown)}; layers: {names}")
        return dict(value)
    return dict.fromkeys(names, value)


def _steps(model: nn.Module, field: str, value: Any, make: Any, types: tuple[str, ...]) -> list:
    """One config per distinct setting, each selecting its layers by exact name."""
    names = [n for n, m in model.named_modules() if _kind(m) in types]
    settings = _per_layer(value, names)
    groups: dict[Any, list[str]] = {}
    for name, v in settings.items():
        groups.setdefault(v, []).append(name)
    return [
        make(**{field: v}, select=Select(names=tuple(re.escape(n) for n in layer_names)))
        for v, layer_names in groups.items()
    ]


def _kind(module: nn.Module) -> str:
    return getattr(type(module), "stands_for", "") or type(module).__name__


def to_coded(
    model: nn.Module,
    index_bits: int | Mapping[str, int | None] | None = 5,
    value_dtype: str = "float32",
) -> nn.Module:
    """Replace every shared-weight layer of ``model`` (in place) by its Huffman-coded form
    (``index_bits=None``, or a layer missing from a mapping: the relative-index width that codes
    the layer smallest)."""
    shared = {n: m for n, m in model.named_modules() if isinstance(m, _Shared)}
    bits = _per_layer(index_bits, list(shared))
    for name, layer in shared.items():
        if not isinstance(layer, _Coded):
            model.set_submodule(name, coded_layer(layer, bits.get(name), value_dtype))
    return model


def share(
    pruned: nn.Module,
    bits: int | Mapping[str, int] = 5,
    *,
    init: str = "linear",
    iterations: int = 30,
    types: tuple[str, ...] = ("Linear", "Conv2d"),
) -> nn.Module:
    """Stage 2 without retraining: k-means weight sharing of every ``Linear``/``Conv2d`` of a copy
    of ``pruned`` (``bits`` per layer name, or one for all)."""
    from modelzip.api import compress

    make = functools.partial(WeightSharingConfig, init=init, iterations=iterations)
    steps = _steps(pruned, "bits", bits, make, types)
    shared, _ = compress(pruned, steps, evaluate=False, measure=False)
    return shared


def quantize_and_code(
    pruned: nn.Module,
    data: Any = None,
    *,
    bits: int | Mapping[str, int] = 5,
    index_bits: int | Mapping[str, int | None] | None = 5,
    value_dtype: str = "float32",
    finetune: Any = None,
    init: str = "linear",
    iterations: int = 30,
    types: tuple[str, ...] = ("Linear", "Conv2d"),
) -> tuple[nn.Module, float | None]:
    """Stages 2 and 3 on an already pruned model (a copy): k-means sharing, centroid fine-tuning
    with ``finetune`` (a :class:`modelzip.train.TrainConfig`) on ``data``, Huffman coding.

    Returns the coded model and its test accuracy after fine-tuning (None without data).
    """
    shared = share(pruned, bits, init=init, iterations=iterations, types=types)
    if finetune is not None:
        if data is None:
            raise ConfigError("fine-tuning the centroids needs data")
        from modelzip.train import train

        train(shared, data, finetune, progress=False)
    model = to_coded(shared, index_bits, value_dtype).eval()
    accuracy = None
    if data is not None:
        from modelzip.train import evaluate

        accuracy = float(evaluate(model, data)["accuracy"])
    return model, accuracy


@dataclasses.dataclass
class DeepCompressionResult:
    """What :func:`deep_compression` measured."""

    original_bytes: int
    stages: dict[str, Any]
    file_bytes: int
    path: Path | None
    accuracy: dict[str, float | None]

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        path = str(self.path) if self.path else None
        return {**dataclasses.asdict(self), "ratio": self.ratio, "path": path}


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def relative_entries(mask: torch.Tensor, index_bits: int) -> int:
    """Entries of the relative-index form of ``mask``'s kept weights with ``index_bits``-bit
    gaps: the kept weights plus one padding entry per ``2^index_bits`` skipped zeros (the count
    :func:`~modelzip.prune.sparse_format.encode_relative` produces)."""
    pos = torch.nonzero(mask.reshape(-1)).flatten()
    gaps = torch.diff(pos, prepend=pos.new_tensor([-1])) - 1
    return int(pos.numel() + (gaps >> index_bits).sum())


def _fixed_width(mask: torch.Tensor, value_bits: int, extra: int) -> tuple[int, int]:
    """``(bytes, index_bits)`` of the smallest fixed-width relative-index layout: entries of
    ``value_bits`` plus an index, over the widths :data:`INDEX_BITS_SEARCH` (plus ``extra``)."""
    best = None
    for b in INDEX_BITS_SEARCH:
        e = relative_entries(mask, b)
        size = math.ceil(e * b / 8) + math.ceil(e * value_bits / 8) + extra
        if best is None or size < best[0]:
            best = (size, b)
    assert best is not None
    return best


def breakdown(model: nn.Module, original: nn.Module | None = None) -> dict[str, Any]:
    """Bytes of ``model`` (Huffman-coded layers) after each Deep Compression stage.

    Per coded layer, in the fixed-width relative-index layout with ``e`` entries (kept weights
    plus padding entries) and the index width that makes each stage smallest:

    * ``pruned``: ``⌈e·index_bits/8⌉ + 4e`` (float32 values with relative indices) + bias;
    * ``quantized``: ``⌈e·index_bits/8⌉ + ⌈e·bits/8⌉`` + codebook + bias (as stored), the
      paper's fixed-width accounting where a padding entry takes a code slot;
    * ``huffman``: the coded streams (with their code tables and counts) + codebook + bias, i.e.
      :meth:`storage_bytes`, what the saved file holds.

    Tensors outside the coded layers (other layers, normalization constants) count in every
    stage. ``original`` (the uncompressed model) adds its dense float bytes and the ratios.
    """
    from modelzip.core.counting import module_bytes

    coded = {n: m for n, m in model.named_modules() if isinstance(m, _Coded)}
    rest = module_bytes(model) - sum(m.storage_bytes() for m in coded.values())
    layers: dict[str, Any] = {}
    for name, layer in coded.items():
        weight = layer.to_dense().weight.detach()
        mask = layer.mask
        bias = 0 if layer.bias is None else _tensor_bytes([layer.bias])
        packed = layer.packed_state()
        stored = _tensor_bytes([packed["centroids"]]) + (
            _tensor_bytes([packed["bias"]]) if "bias" in packed else 0
        )
        pruned, pruned_index_bits = _fixed_width(mask, 8 * weight.element_size(), bias)
        quantized, quantized_index_bits = _fixed_width(mask, layer.weight_bits, stored)
        layers[name] = {
            "weights": weight.numel(),
            "kept": int(mask.sum()),
            "kept_fraction": float(mask.float().mean()),
            "bits": layer.weight_bits,
            "index_bits": layer.index_bits,
            "pruned_index_bits": pruned_index_bits,
            "quantized_index_bits": quantized_index_bits,
            **layer.stream_stats(),
            "dense": _tensor_bytes([weight]) + bias,
            "pruned": pruned,
            "quantized": quantized,
            "huffman": layer.storage_bytes(),
        }
    out: dict[str, Any] = {"layers": layers, "other_bytes": rest}
    for stage in ("dense", "pruned", "quantized", "huffman"):
        out[stage] = rest + sum(v[stage] for v in layers.values())
    if original is not None:
        out["original"] = module_bytes(original)
        for stage in ("pruned", "quantized", "huffman"):
            out[f"{stage}_ratio"] = out["original"] / out[stage]
    return out


def saved_size(model: nn.Module, path: str | Path | None = None) -> tuple[int, Path | None]:
    """Bytes on disk of ``model`` saved with :func:`modelzip.save` (to ``path``, or a temporary
    file that is removed)."""
    from modelzip.serialize import save

    if path is not None:
        written = save(model, path)
        return written.stat().st_size, written
    with tempfile.TemporaryDirectory() as tmp:
        written = save(model, Path(tmp) / "model.mzip")
        return written.stat().st_size, None


def deep_compression(
    model: nn.Module,
    data: Any = None,
    *,
    sparsity: float | Mapping[str, float] = 0.9,
    bits: int | Mapping[str, int] = 5,
    index_bits: int | Mapping[str, int | None] | None = 5,
    value_dtype: str = "float32",
    finetune: Any = None,
    prune_finetune: Any = None,
    path: str | Path | None = None,
    types: tuple[str, ...] = ("Linear", "Conv2d"),
) -> tuple[nn.Module, DeepCompressionResult]:
    """Deep Compression of ``model`` (a copy; the caller's model is not changed).

    Parameters
    ----------
    sparsity, bits, index_bits:
        One value for every ``Linear``/``Conv2d``, or a mapping from layer name to value
        (``index_bits=None``: the width that codes each layer smallest).
    value_dtype:
        Stored float format of codebooks and biases (``float16`` rounds them after fine-tuning).
    finetune:
        :class:`modelzip.train.TrainConfig` for fine-tuning the centroids after sharing.
    prune_finetune:
        :class:`modelzip.train.TrainConfig` for retraining after pruning (default: ``finetune``).
    path:
        Where to save the compressed model (default: a temporary file, only measured).

    Returns
    -------
    (model, result):
        The Huffman-coded model and the sizes (per stage, and of the file on disk) and
        accuracies after each stage (with ``data``).
    """
    from modelzip.api import compress
    from modelzip.prune.magnitude import MagnitudePruneConfig

    prune_steps = _steps(model, "sparsity", sparsity, MagnitudePruneConfig, types)
    pruned, _ = compress(
        model, prune_steps, data, finetune=prune_finetune or finetune, evaluate=False,
        measure=False, deploy=False,  # sharing and coding come next
    )  # fmt: skip
    accuracy: dict[str, float | None] = {"original": None, "pruned": None}
    if data is not None:
        from modelzip.train import evaluate

        accuracy["original"] = float(evaluate(model, data)["accuracy"])
        accuracy["pruned"] = float(evaluate(pruned, data)["accuracy"])
    coded, accuracy["quantized"] = quantize_and_code(
        pruned, data, bits=bits, index_bits=index_bits, value_dtype=value_dtype,
        finetune=finetune, types=types,
    )  # fmt: skip
    accuracy["huffman"] = accuracy["quantized"]  # Huffman coding is lossless
    stages = breakdown(coded, model)
    file_bytes, written = saved_size(coded, path)
    result = DeepCompressionResult(stages["original"], stages, file_bytes, written, accuracy)
    return coded, result
