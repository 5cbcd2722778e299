"""Weight quantization of the factors a tensor-network layer holds: TT cores, HT and Tucker
factors.

A decomposed layer that holds its factors as plain layers (SVD's ``first``/``second``, Tucker-2's
and CP's convs) is quantized in its parts, which a later step selects like any layer
(:attr:`~modelzip.core.module.CompressedModule.compressible_parts`). The tensor-network layers
(:class:`~modelzip.decompose.tt.TTLinear`, ``TTConv2d``, ``HTLinear``, ``TuckerLinear``) hold
theirs as tensors their own forward contracts, and declare
:attr:`~modelzip.core.module.CompressedModule.factor_weights`: a weight quantizer
(``quantize_weights``, ``int8``) applied to such a layer returns a :class:`FactorQuantized`,
which wraps it and stores each factor (every parameter of two or more dimensions: cores, factor
matrices, a TT conv's spatial kernel; not the bias) as bit-packed codes plus per-group levels,
the storage of :class:`~modelzip.quantize.layers.QuantFormat`.

The wrapped layer runs unchanged on the decoded factors: they are decoded once into its own
(frozen) parameters and decoded again only when the codes change (their version counter or
storage), the cache policy of :class:`~modelzip.core.compressed.WeightFormat`. The file holds
the codes and levels, and the wrapped layer's other tensors.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import CompressedModule, layer_class, layer_key, register_layer
from modelzip.core.registry import SkipLayer
from modelzip.core.workload import Workload
from modelzip.quantize.layers import QuantFormat
from modelzip.quantize.quantizer import Quantized

__all__ = ["CodedFactor", "FactorQuantized", "factor_names", "holds_factors", "quantize_factors"]


def holds_factors(module: nn.Module) -> bool:
    """Whether ``module`` is a compressed layer holding factor tensors a quantizer may code."""
    return isinstance(module, CompressedModule) and type(module).factor_weights


def factor_names(layer: nn.Module) -> list[str]:
    """The factors of a tensor-network layer: its parameters of two or more dimensions."""
    return [name for name, p in layer.named_parameters() if p.dim() >= 2]


class CodedFactor(QuantFormat, nn.Module):
    """One factor tensor as packed codes and per-group levels (a piece of
    :class:`FactorQuantized`, not a layer of its own)."""

    def __init__(self, shape: Sequence[int], **format_spec: Any) -> None:
        nn.Module.__init__(self)
        self._init_format(tuple(int(s) for s in shape), **format_spec)


def _codes_spec(q: Quantized) -> dict[str, Any]:
    n_levels = 0 if q.levels is None else int(q.levels.shape[1])
    return {"bits": q.bits, "granularity": q.granularity, "group_size": q.group_size,
            "n_levels": n_levels}  # fmt: skip


@register_layer
class FactorQuantized(CompressedModule):
    """A tensor-network layer whose factors are stored as ``bits``-bit codes.

    Parameters
    ----------
    inner_class:
        Registered class name of the wrapped layer (:func:`modelzip.core.module.layer_key`).
    inner_spec:
        Its :meth:`~modelzip.core.module.CompressedModule.spec`.
    factors:
        Names of its coded parameters (``tt_cores.0``, ``spatial.weight``).
    codes:
        The storage of every factor: ``bits``, ``granularity``, ``group_size`` and ``n_levels``
        (0: affine levels ``offset + scale·code`` per group; else a table per group).

    Stored: per factor ``ceil(n·bits/8)`` bytes of codes plus its levels, and the wrapped layer's
    other tensors (the bias).
    """

    # The wrapped layer's export, on its decoded factors (see _factor_quantized in export).
    onnx_export = "converter:factor_quantized"
    # The product of the decoded factors as one weight, where measured faster than contracting.
    executable_forms = ("dense",)

    def __init__(
        self,
        inner_class: str,
        inner_spec: dict[str, Any],
        factors: Sequence[str],
        codes: dict[str, Any],
    ) -> None:
        super().__init__()
        self.inner = layer_class(inner_class).from_spec(inner_spec)
        params = dict(self.inner.named_parameters())
        missing = [f for f in factors if f not in params]
        if missing:
            raise ModelError(f"{inner_class} has no factor parameters {missing}")
        self.factors = tuple(factors)
        self.code_spec = dict(codes)
        self.weight_bits = int(codes["bits"])
        self.coded = nn.ModuleList(CodedFactor(params[f].shape, **self.code_spec) for f in factors)
        self._adopt(self.inner)

    def _adopt(self, inner: CompressedModule) -> None:
        """Hold ``inner``: its factors become the decoded cache (frozen), and selectors match
        this layer by what ``inner`` stands for."""
        self.inner = inner
        params = dict(inner.named_parameters())
        for f in self.factors:
            params[f].requires_grad_(False)
        self.stands_for = type(inner).stands_for
        self.__dict__.pop("_decoded_key", None)

    @classmethod
    def from_layer(
        cls, layer: CompressedModule, quantize: Callable[[torch.Tensor], Quantized]
    ) -> FactorQuantized:
        """Wrap ``layer`` (taken over, not copied) with each factor coded by ``quantize``."""
        # The wrapper stores the layer's state without the coded factors, by their parameter
        # names: a layer (or a cell inside it, as a low-rank LSTM's) that stores itself under
        # other names would keep its float factors beside the codes.
        for part in layer.modules():
            if not isinstance(part, CompressedModule):
                continue
            if (
                type(part).packed_state is not CompressedModule.packed_state
                or type(part).state_dict is not nn.Module.state_dict
                or part.compressed_parts()
            ):
                what = type(layer).__name__
                if part is not layer:
                    what += f" (its {type(part).__name__})"
                raise ModelError(f"{what} has its own packed form; cannot code it")
        names = factor_names(layer)
        if not names:
            raise ModelError(f"{type(layer).__name__} has no factor tensors")
        params = dict(layer.named_parameters())
        coded = [quantize(params[n].detach()) for n in names]
        specs = [_codes_spec(q) for q in coded]
        if any(s != specs[0] for s in specs):
            raise ModelError(f"{type(layer).__name__}: its factors were coded in different forms")
        wrapper = cls(layer_key(type(layer)), layer.spec(), names, specs[0])
        wrapper._adopt(layer)
        wrapper.to(params[names[0]].device)
        for piece, q in zip(wrapper.coded, coded, strict=True):
            piece._store(q.codes, q.scale, q.offset, q.levels)
        wrapper.decode()
        return wrapper

    def decode(self) -> None:
        """Decode the codes into the wrapped layer's factors, unless they already hold them."""
        pieces = [t for piece in self.coded for t in piece._buffers.values() if t is not None]
        # Inference tensors keep no version counter: decode every call (as WeightFormat does).
        inference = any(t.is_inference() for t in pieces)
        key = None if inference else tuple((t._version, t.data_ptr()) for t in pieces)
        if key is not None and self.__dict__.get("_decoded_key") == key:
            return
        params = dict(self.inner.named_parameters())
        with torch.no_grad():
            for f, piece in zip(self.factors, self.coded, strict=True):
                params[f].copy_(piece.decode_weight())
        self.__dict__["_decoded_key"] = key

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.decode()
        return self.inner(*args, **kwargs)

    def decoded_layer(self) -> CompressedModule:
        """A copy of the wrapped layer holding the decoded factors (export, tests)."""
        self.decode()
        return copy.deepcopy(self.inner)

    def to_dense(self) -> nn.Module:
        self.decode()
        return self.inner.to_dense()

    def spec(self) -> dict[str, Any]:
        return {
            "inner_class": layer_key(type(self.inner)),
            "inner_spec": self.inner.spec(),
            "factors": list(self.factors),
            "codes": dict(self.code_spec),
        }

    def _factor_keys(self) -> set[str]:
        return {f"inner.{f}" for f in self.factors}

    def packed_state(self) -> dict[str, torch.Tensor]:
        """The codes and levels of every factor, and the wrapped layer's other tensors."""
        skip = self._factor_keys()
        return {k: v for k, v in self.state_dict().items() if k not in skip}

    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in self._factor_keys()]
        if missing or unexpected:
            raise RuntimeError(
                f"{type(self).__name__}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.__dict__.pop("_decoded_key", None)
        self.decode()

    def param_count(self) -> int:
        return self.inner.param_count()

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        """The wrapped layer's ops, their weights read as ``bits``-bit codes."""
        self.decode()
        bits = self.weight_bits
        return [
            dataclasses.replace(
                op,
                weight_bits=bits,
                weight_bytes=math.ceil(op.weight_bytes * bits / max(op.weight_bits, 1)),
            )
            for op in self.inner.workloads(name, inputs, output)
        ]


def quantize_factors(
    module: nn.Module, quantize: Callable[[torch.Tensor], Quantized]
) -> FactorQuantized:
    """``module``'s factors coded by ``quantize`` (a layer that cannot be coded is skipped)."""
    try:
        return FactorQuantized.from_layer(module, quantize)  # type: ignore[arg-type]
    except ModelError as e:
        raise SkipLayer(str(e)) from None
