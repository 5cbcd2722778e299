"""One compressed layer = an op × a weight format.

The op (:class:`CompressedLinear`, :class:`CompressedConv2d`) owns what every linear or conv
layer has whatever its weight's storage: its shape (``in/out_features`` or one
:class:`~modelzip.core.geometry.ConvGeometry`), the bias, the spec, the forward and
``to_dense``. A :class:`WeightFormat` owns how the weight is stored: it registers its tensors
(packed codes, a mask, kept values, centroids ...), says its constructor arguments and decodes
the float weight. A concrete layer is the two mixed, with nothing of its own::

    class QuantFormat(WeightFormat): ...          # storage, written once

    @register_layer
    class QuantLinear(QuantFormat, CompressedLinear): ...

    @register_layer
    class QuantConv2d(QuantFormat, CompressedConv2d): ...

The same pattern as torchao's ``nn.Linear`` holding a quantized weight tensor, or
TensorLy-Torch's factorized layers holding a factorized tensor, but with the stored tensors as
the layer's own buffers so that state-dict keys (and the files written with them) stay what
they were. A format may also run its own kernel by overriding :meth:`WeightFormat.linear` or
:meth:`WeightFormat.conv2d` (int8 products, bit-packed XNOR).

One cache policy for every format: the decoded weight is kept for calls without autograd, and
rebuilt when any of the layer's own tensors changes (its version counter or storage moves), so
loading a state dict, ``.to()`` or an in-place update never leaves a stale weight.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.geometry import ConvGeometry
from modelzip.core.module import CompressedModule, dense_linear, load_dense

L = TypeVar("L", bound="CompressedModule")


class WeightFormat:
    """How one weight tensor is stored; mixed into :class:`CompressedLinear` or
    :class:`CompressedConv2d`.

    Subclasses implement :meth:`_init_format` (register the storage tensors for a weight of
    ``weight_shape``), :meth:`format_spec` (the keyword arguments that rebuild that storage
    empty) and :meth:`decode_weight` (the float weight). They may override
    :meth:`weight_params` and :meth:`sparsity`, and :meth:`packed_state`/
    :meth:`load_packed_state` when the stored form is more compact than the state dict.
    """

    weight_shape: tuple[int, ...]
    #: Bits per stored weight (reports and the hardware model); None for float storage.
    weight_bits: int | None = None

    def _init_format(self, weight_shape: tuple[int, ...], **format_spec: Any) -> None:
        raise NotImplementedError

    def format_spec(self) -> dict[str, Any]:
        """JSON-able keyword arguments of :meth:`_init_format` besides the shape."""
        return {}

    def decode_weight(self) -> torch.Tensor:
        """The float weight (``weight_shape``), differentiable where the format trains."""
        raise NotImplementedError

    def weight_params(self) -> int:
        """Stored weight numbers (a pruned format counts its kept weights)."""
        return math.prod(self.weight_shape)

    def sparsity(self) -> float:
        """Fraction of weights that are exactly zero by construction."""
        return 0.0

    def param_count(self) -> int:
        """Stored weight numbers and the bias (the layer's :meth:`CompressedModule.param_count`)."""
        bias = self.bias  # type: ignore[attr-defined]
        return self.weight_params() + (bias.numel() if bias is not None else 0)

    def decoded_weight(self, dtype: torch.dtype | None = None, keep: bool = True) -> torch.Tensor:
        """The decoded weight, cached while no gradient is being recorded. ``keep=False``
        (a caller that copies it, as :meth:`to_dense`) reads a valid cache but stores none: a
        float copy kept for one read would outlive it (4× an int8 weight)."""
        if torch.is_grad_enabled():
            w = self.decode_weight()
            return w if dtype is None else w.to(dtype)
        own = [*self._parameters.values(), *self._buffers.values()]  # type: ignore[attr-defined]
        if any(t is not None and t.is_inference() for t in own):
            # Inference tensors (a copy made under inference_mode) keep no version counter, so
            # a cache could not tell that they changed: decode every call.
            w = self.decode_weight().detach()
            return w if dtype is None else w.to(dtype)
        key = tuple((t._version, t.data_ptr(), t.dtype) for t in own if t is not None)
        cache: tuple[Any, torch.Tensor] | None = self.__dict__.get("_weight_cache")
        if cache is None or cache[0] != key:
            cache = (key, self.decode_weight().detach())
            if keep:
                self.__dict__["_weight_cache"] = cache
        return cache[1] if dtype is None else cache[1].to(dtype)

    def drop_decoded_weight(self) -> None:
        """Forget the cached decoded weight (rebuilt by the next :meth:`decoded_weight`)."""
        self.__dict__.pop("_weight_cache", None)

    # Ops with a kernel of their own (int8 products, XNOR popcount) override these.
    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, self.decoded_weight(x.dtype), bias)

    def conv2d(
        self, x: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None
    ) -> torch.Tensor:
        w = self.decoded_weight(x.dtype)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)
        return geometry.conv(x, w, bias)


def _bias(out_features: int, bias: bool) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(out_features)) if bias else None


class CompressedLinear(CompressedModule):
    """The linear op of a compressed layer; its weight is a :class:`WeightFormat`'s."""

    stands_for: ClassVar[str] = "Linear"
    bias: nn.Parameter | None

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, **format_spec: Any
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_format((self.out_features, self.in_features), **format_spec)  # type: ignore[attr-defined]
        self.bias = _bias(self.out_features, bias)

    @classmethod
    def like(cls: type[L], dense: nn.Module, **format_spec: Any) -> L:
        """An empty layer of ``dense``'s shape, bias, device (and float dtype)."""
        layer = cls(dense.in_features, dense.out_features, dense.bias is not None, **format_spec)
        return layer.to(dense.weight.device)  # type: ignore[return-value]

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            **self.format_spec(),  # type: ignore[attr-defined]
            "bias": self.bias is not None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.bias)  # type: ignore[attr-defined]

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.decoded_weight(keep=False).detach(), self.bias)  # type: ignore[attr-defined]


class CompressedConv2d(CompressedModule):
    """The 2-D conv op of a compressed layer; its weight is a :class:`WeightFormat`'s."""

    stands_for: ClassVar[str] = "Conv2d"
    bias: nn.Parameter | None

    def __init__(
        self, conv: ConvGeometry | dict[str, Any], bias: bool = True, **format_spec: Any
    ) -> None:
        super().__init__()
        self.geometry = conv if isinstance(conv, ConvGeometry) else ConvGeometry.from_dict(conv)
        self._init_format(self.geometry.weight_shape, **format_spec)  # type: ignore[attr-defined]
        self.bias = _bias(self.geometry.out_channels, bias)

    @classmethod
    def like(cls: type[L], dense: nn.Module, **format_spec: Any) -> L:
        """An empty layer of ``dense``'s geometry, bias and device (zero padding only)."""
        layer = cls(ConvGeometry.of(dense), dense.bias is not None, **format_spec)
        return layer.to(dense.weight.device)  # type: ignore[return-value]

    @classmethod
    def from_spec(cls: type[L], spec: dict[str, Any]) -> L:
        rest = dict(spec)
        geometry = ConvGeometry.pop_from_spec(rest)
        return cls(geometry, **rest)

    def spec(self) -> dict[str, Any]:
        return {
            "conv": self.geometry.to_dict(),
            **self.format_spec(),  # type: ignore[attr-defined]
            "bias": self.bias is not None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(x, self.geometry, self.bias)  # type: ignore[attr-defined]

    def to_dense(self) -> nn.Conv2d:
        w = self.decoded_weight(keep=False).detach()  # type: ignore[attr-defined]
        return load_dense(self.geometry.dense(self.bias is not None), w, self.bias)  # type: ignore[return-value]


def drop_decoded_weights(model: nn.Module) -> None:
    """Forget every compressed layer's cached decoded weight in ``model``: a deployed layer
    that runs on its own kernel never reads it again, and a float copy of an int8 MLP's
    weights is four times their size (an int8 4096×4096 layer kept 64 MB of float beside its
    16 MB of codes after the calibration and checks of the deploy step)."""
    for module in model.modules():
        if isinstance(module, WeightFormat):
            module.drop_decoded_weight()
