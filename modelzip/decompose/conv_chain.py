"""The one base of the decomposed convolutions: a conv held as a chain of small convs.

:class:`ConvChain` owns what every decomposed conv has whatever its factors: one
:class:`~modelzip.core.geometry.ConvGeometry`, the bias flag and the padding mode, the spec,
``to_dense``, the forward through its pieces and the workloads. A subclass says how its pieces
are built from the geometry (:meth:`ConvChain._init_chain`, the factors' own arguments only)
and what dense kernel they multiply to (:meth:`ConvChain.kernel`)::

    @register_layer
    class Tucker2Conv2d(ConvChain):
        parts = ("first", "core", "last")

        def _init_chain(self, new: Pieces, ranks): ...   # rank arguments only
        def kernel(self): ...                             # the O × I × kh × kw product

The spec writes the geometry under ``"conv"``, as
:class:`~modelzip.core.compressed.CompressedConv2d` does; files written before kept it flat,
which :meth:`ConvChain.from_spec` still reads.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.geometry import ConvGeometry
from modelzip.core.module import CompressedModule, load_dense
from modelzip.core.workload import Workload
from modelzip.decompose._ops import conv_chain_workloads

C = TypeVar("C", bound="ConvChain")
_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")


@dataclasses.dataclass(frozen=True)
class Pieces:
    """Makes a chain's pieces with its padding mode, device and dtype."""

    padding_mode: str
    device: Any
    dtype: Any

    def conv(self, geometry: ConvGeometry, bias: bool = False) -> nn.Conv2d:
        """A piece that pads like the dense conv did (a circular conv stays circular)."""
        return geometry.dense(
            bias, padding_mode=self.padding_mode, device=self.device, dtype=self.dtype
        )

    def pointwise(self, in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
        return nn.Conv2d(
            in_channels, out_channels, 1, bias=bias, device=self.device, dtype=self.dtype
        )

    def tensor(self, *shape: int, fill: float = 0.0) -> nn.Parameter:
        return nn.Parameter(torch.full(shape, fill, device=self.device, dtype=self.dtype))


def separable(geometry: ConvGeometry) -> tuple[ConvGeometry, ConvGeometry]:
    """The ``kh×1`` and ``1×kw`` halves of a kernel, the stride, padding and dilation of each
    axis going with its half (set their channels with ``with_channels``)."""
    g = geometry
    (kh, kw), (sh, sw), (dh, dw), pad = g.kernel_size, g.stride, g.dilation, g.padding
    vpad = pad if isinstance(pad, str) else (pad[0], 0)
    hpad = pad if isinstance(pad, str) else (0, pad[1])
    i, o = g.in_channels, g.out_channels
    return (
        ConvGeometry(i, o, (kh, 1), (sh, 1), vpad, (dh, 1)),
        ConvGeometry(i, o, (1, kw), (1, sw), hpad, (1, dw)),
    )


class ConvChain(CompressedModule):
    """A conv layer replaced by a chain of small convs held as submodules (:attr:`parts`)."""

    onnx_export = "traced"
    # Where the chain of small convs is slower than the one conv it makes (small layers,
    # channels-last oneDNN kernels), deploy runs that conv; the file keeps the factors.
    executable_forms: ClassVar[tuple[str, ...]] = ("dense",)
    stands_for = "Conv2d"

    #: The child convs in the order the input runs through them.
    parts: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The pieces are plain convs a later step may compress, unless the class says otherwise.
        if "compressible_parts" not in cls.__dict__:
            cls.compressible_parts = cls.parts
        # Channel pruning resizes the chain's outer channels through its first and last pieces,
        # unless the class fixes its pieces (its spec then fixes its channels).
        if "channel_parts" not in cls.__dict__:
            ends = (cls.parts[0], cls.parts[-1]) if cls.parts else ()
            cls.channel_parts = ends if cls.compressible_parts == cls.parts else ()

    def __init__(
        self,
        conv: ConvGeometry | dict[str, Any],
        *chain_args: Any,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        **chain_spec: Any,
    ) -> None:
        super().__init__()
        self.geometry = conv if isinstance(conv, ConvGeometry) else ConvGeometry.from_dict(conv)
        if self.geometry.groups != 1:
            raise ModelError(
                f"grouped convolution (groups={self.geometry.groups}) cannot be decomposed here"
            )
        self.bias_enabled, self.padding_mode = bool(bias), padding_mode
        self._init_chain(Pieces(padding_mode, device, dtype), *chain_args, **chain_spec)

    def _init_chain(self, new: Pieces, *args: Any, **kwargs: Any) -> None:
        """Register the pieces (and any factor of its own) for :attr:`geometry`."""
        raise NotImplementedError

    def chain_spec(self) -> dict[str, Any]:
        """JSON-able keyword arguments of :meth:`_init_chain`."""
        return {}

    def kernel(self) -> torch.Tensor:
        """The dense ``O × I × kh × kw`` kernel the pieces multiply to."""
        raise NotImplementedError

    def output_bias(self) -> torch.Tensor | None:
        """The bias the chain adds: its last piece's."""
        return getattr(self, self.parts[-1]).bias

    @classmethod
    def like(cls: type[C], dense: nn.Conv2d, *chain_args: Any, **chain_spec: Any) -> C:
        """A chain of ``dense``'s geometry, padding, device and dtype, holding its bias; the
        caller fills the factors."""
        geometry = ConvGeometry(*(getattr(dense, f) for f in _FIELDS))
        w = dense.weight
        factory = {"padding_mode": dense.padding_mode, "device": w.device, "dtype": w.dtype}
        layer = cls(geometry, *chain_args, bias=dense.bias is not None, **factory, **chain_spec)
        if dense.bias is not None:
            with torch.no_grad():
                layer.output_bias().copy_(dense.bias)
        return layer

    @classmethod
    def from_spec(cls: type[C], spec: dict[str, Any]) -> C:
        rest = dict(spec)
        # Taken before the geometry: a flat spec's mode would be refused by ConvGeometry.
        mode = rest.pop("padding_mode", "zeros")
        # The compact convs' files (before issue #19) kept the bias flag in {"geometry": ...}.
        rest.setdefault("bias", rest.get("geometry", {}).get("bias", True))
        parts = rest.pop("parts", None)
        layer = cls(ConvGeometry.pop_from_spec(rest), padding_mode=mode, **rest)
        if parts is not None:
            layer.install_parts(parts)
        return layer

    def spec(self) -> dict[str, Any]:
        return {
            "conv": self.geometry.to_dict(),
            "padding_mode": self.padding_mode,
            "bias": self.bias_enabled,
            **self.chain_spec(),
            **self.parts_spec(),
        }

    def follow_parts(self) -> None:
        """The geometry's channels from the first piece's inputs and the last one's outputs."""
        first, last = (getattr(self, p) for p in self.channel_parts)
        self.geometry = self.geometry.with_channels(first.in_channels, last.out_channels)

    def plain(self) -> ConvChain:
        """This chain with plain convs for its compressed pieces (their dense forms), sharing
        everything else: what :meth:`kernel` and :meth:`output_bias` read."""
        parts = self.compressed_parts()
        if not parts:
            return self
        chain = copy.copy(self)
        chain._modules = dict(self._modules)
        for name, part in parts.items():
            chain._modules[name] = part.to_dense()
        return chain

    def to_dense(self) -> nn.Conv2d:
        chain = self.plain()
        bias, kernel = chain.output_bias(), chain.kernel()
        dense = self.geometry.dense(
            bias is not None,
            padding_mode=self.padding_mode,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        return load_dense(dense, kernel, bias)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = getattr(self, part)(x)
        return x

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        return conv_chain_workloads(name, [(p, getattr(self, p)) for p in self.parts], inputs[0])

    # nn.Conv2d's attributes, read by the hardware model, the kernels and export.
    in_channels = property(lambda self: self.geometry.in_channels)
    out_channels = property(lambda self: self.geometry.out_channels)
    kernel_size = property(lambda self: self.geometry.kernel_size)
    stride = property(lambda self: self.geometry.stride)
    padding = property(lambda self: self.geometry.padding)
    dilation = property(lambda self: self.geometry.dilation)
