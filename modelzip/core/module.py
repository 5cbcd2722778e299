"""The protocol every compressed layer follows, and the table of layer classes a file may name.

A compressed layer is built from the dense one and compares equal to it::

    layer = SomeCompressedLinear.from_dense(dense, config)
    torch.testing.assert_close(layer(x), layer.to_dense()(x))

It stores itself compactly: :meth:`packed_state` holds the compact tensors (int8 codes, packed bits,
factors, kept values and a bit mask), so a saved file is really smaller, and :meth:`storage_bytes`
says how many bytes that is.
It can be rebuilt empty from :meth:`spec` (JSON-able constructor arguments) before its state is
loaded, which is how :func:`modelzip.load` rebuilds a model without pickle: only classes registered
here with :func:`register_layer` may be named in a file.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.workload import Workload

L = TypeVar("L", bound="CompressedModule")

_LAYERS: dict[str, type[CompressedModule]] = {}
#: Former layer-class names -> the class that reads their files now (a class moved or merged
#: into another keeps loading the files written under its old name; the new class's
#: ``from_spec`` accepts the old spec).
MOVED_LAYERS: dict[str, str] = {
    "modelzip.kernels.sparse_layers.SparseLinear": "modelzip.prune.sparse_exec.SparseLinear",
    "modelzip.kernels.sparse_layers.SparseConv2d": "modelzip.prune.sparse_exec.SparseConv2d",
}


def register_layer(cls: type[L]) -> type[L]:
    """Allow ``cls`` to be rebuilt from a file (by its qualified name)."""
    _LAYERS[layer_key(cls)] = cls
    return cls


def layer_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def layer_class(key: str) -> type[CompressedModule]:
    """The registered class named ``key``; anything else is refused (files name classes)."""
    key = MOVED_LAYERS.get(key, key)
    if key not in _LAYERS and key.startswith("modelzip."):
        # Layers register when their module is imported; import it (modelzip's own modules only,
        # so a file cannot make us import arbitrary code) and look again.
        module_name = key.rsplit(".", 1)[0]
        with contextlib.suppress(ImportError):
            importlib.import_module(module_name)
    if key not in _LAYERS:
        raise ModelError(f"the file names layer class {key!r}, which is not a modelzip layer")
    return _LAYERS[key]


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (``out × in``) and ``bias``, on their device and dtype
    (the :meth:`CompressedModule.to_dense` of every linear-like layer)."""
    out_features, in_features = weight.shape
    return load_dense(nn.Linear(in_features, out_features, bias is not None), weight, bias)  # type: ignore[return-value]


def load_dense(dense: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``dense`` (a fresh ``nn.Linear``/``nn.Conv2d``) moved to ``weight``'s device and dtype and
    holding ``weight`` and ``bias`` (the :meth:`CompressedModule.to_dense` of layers with a
    decoded weight)."""
    dense = dense.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        dense.weight.copy_(weight)
        if bias is not None:
            dense.bias.copy_(bias)
    return dense


class CompressedModule(nn.Module):
    """Base of modelzip's compressed layers. Subclasses implement the methods below."""

    #: Inspection treats the layer as one unit (its children are not walked) when True.
    leaf: ClassVar[bool] = True
    #: Class name of the torch layer this one replaces (``Linear``); selectors match on it too,
    #: so a later recipe step that selects ``Linear`` finds the compressed layer and can refuse
    #: it with a reason instead of silently passing it by.
    stands_for: ClassVar[str] = ""

    # Capabilities, declared by each class so that export, materialize and the search read them
    # here instead of keeping tables of class names that must follow the classes by hand.

    #: How the layer exports to ONNX (:mod:`modelzip.export`): ``"traced"`` (its forward is
    #: already plain layers), ``"dense"`` (``to_dense()`` computes the same), ``"converter:NAME"``
    #: (a converter registered in :mod:`modelzip.export.convert`), or ``"refused: why"``.
    onnx_export: ClassVar[str] = "refused: modelzip has no ONNX export path for this layer class"
    #: Names of the executable forms :func:`modelzip.deploy` may turn the layer into
    #: (registered with :func:`modelzip.core.forms.register_form`), tried in this order after
    #: the layer itself; the fastest correct one wins.
    executable_forms: ClassVar[tuple[str, ...]] = ()
    #: The layer itself runs its compressed kernel (a static int8 layer on the int8 engine): its
    #: executable forms are alternatives to it, and deploying without a sample, or with
    #: ``choose="compressed"``, keeps the layer (else the last form is the compressed kernel).
    runs_own_kernel: ClassVar[bool] = False
    #: Children that hold the layer's parameters as plain layers (a decomposed conv's factor
    #: convs, a compact block's convs) and that a later recipe step may compress on their own:
    #: selection descends into them (``conv1.core``), :meth:`Context.replace` swaps one inside
    #: this layer, and the spec and packed state carry a compressed part (:meth:`parts_spec`).
    #: Empty: later steps meet the layer whole (and refuse it with a reason).
    compressible_parts: ClassVar[tuple[str, ...]] = ()
    #: The first and last of :attr:`compressible_parts` when channel pruning may remove the
    #: layer's input channels (from the first) and output channels (from the last), tracing
    #: through its parts: :meth:`follow_parts` then takes the layer's channel counts from them.
    #: The channels between its parts (a rank) stay its own setting. Empty: channel pruning keeps
    #: the layer's channels (its spec fixes them).
    channel_parts: ClassVar[tuple[str, ...]] = ()
    #: The layer holds kept weights under a pruning mask: a later step whose method has a form
    #: that keeps the mask (:func:`modelzip.core.registry.kept_form`) is carried out in it.
    kept_weights: ClassVar[bool] = False
    #: The layer holds its weight as factor tensors of its own that its forward contracts (TT
    #: cores, HT and Tucker factors), not as plain layers: a later weight quantizer codes those
    #: factors (:class:`modelzip.quantize.factors.FactorQuantized`), each parameter of two or more
    #: dimensions; its other parameters (the bias) stay float.
    factor_weights: ClassVar[bool] = False

    @classmethod
    def from_dense(cls: type[L], dense: nn.Module, config: Any) -> L:
        """Build from a dense layer (``nn.Linear``, ``nn.Conv2d`` ...) and a method config."""
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The plain torch layer this one computes (weights reconstructed)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``type(self).from_spec(self.spec())`` has the same
        parameter and buffer shapes, so ``load_packed_state(self.packed_state())`` restores it."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls: type[L], spec: dict[str, Any]) -> L:
        return cls(**spec)

    def follow_parts(self) -> None:
        """Take the layer's input and output channel counts from its :attr:`channel_parts`
        after channel pruning resized them."""
        raise NotImplementedError(f"{type(self).__name__} declares no channel_parts")

    def compressed_parts(self) -> dict[str, CompressedModule]:
        """The :attr:`compressible_parts` a later step compressed, by child name."""
        parts = ((n, getattr(self, n, None)) for n in self.compressible_parts)
        return {n: p for n, p in parts if isinstance(p, CompressedModule)}

    def parts_spec(self) -> dict[str, Any]:
        """``{"parts": {child: {"class", "spec"}}}`` for the compressed parts, to put in
        :meth:`spec`; empty when no part is compressed (the spec stays what it was)."""
        parts = self.compressed_parts()
        if not parts:
            return {}
        entries = {n: {"class": layer_key(type(p)), "spec": p.spec()} for n, p in parts.items()}
        return {"parts": entries}

    def install_parts(self, parts: dict[str, Any]) -> None:
        """Rebuild the compressed parts a spec names (the inverse of :meth:`parts_spec`), empty:
        their tensors come with :meth:`load_packed_state`. Only registered classes, only at
        :attr:`compressible_parts`."""
        if not isinstance(parts, dict):
            raise ModelError(f"{type(self).__name__}: 'parts' must be a mapping, got {parts!r}")
        for name, entry in parts.items():
            if name not in self.compressible_parts:
                raise ModelError(
                    f"{type(self).__name__} has no compressible part {name!r}; "
                    f"allowed: {list(self.compressible_parts)}"
                )
            layer = layer_class(entry["class"]).from_spec(entry["spec"])
            old = getattr(self, name)
            device = next((t.device for t in old.parameters()), None)
            setattr(self, name, layer if device is None else layer.to(device))

    def packed_state(self) -> dict[str, torch.Tensor]:
        """The tensors :func:`modelzip.save` writes for this layer.

        The default is the ``state_dict``, with each compressed part's own packed state under its
        name; a layer that trains in an expanded form (a dense weight under a mask) overrides
        this with its compact form (kept values plus a bit mask).
        """
        parts = self.compressed_parts()
        state = {k: v for k, v in self.state_dict().items() if _part_of(k, parts) is None}
        for name, part in parts.items():
            state.update({f"{name}.{k}": v for k, v in part.packed_state().items()})
        return state

    def load_packed_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`packed_state` on a module built by :meth:`from_spec`."""
        parts = self.compressed_parts()
        if not parts:
            self.load_state_dict(state)
            return
        for name, part in parts.items():
            prefix = name + "."
            part.load_packed_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        own = {k: v for k, v in state.items() if _part_of(k, parts) is None}
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [k for k in missing if _part_of(k, parts) is None]
        if missing or unexpected:
            raise RuntimeError(
                f"{type(self).__name__}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def storage_bytes(self) -> int:
        """Bytes of the stored form (what :func:`modelzip.save` writes for this layer)."""
        return sum(t.numel() * t.element_size() for t in self.packed_state().values())

    def workloads(self, name: str, inputs: tuple[torch.Tensor, ...], output: Any) -> list[Workload]:
        """The layer's computation for the hardware model, given one forward call's tensors.

        The default asks the dense equivalent, so a masked or quantized layer is described as its
        dense op; subclasses add bit-widths and sparsity, or list their small ops.
        """
        from modelzip.core.layer_workload import plain_workload

        return [
            plain_workload(
                name,
                self.to_dense(),
                inputs,
                output,
                params=self.param_count(),
                weight_bytes=self.storage_bytes(),
                weight_bits=getattr(self, "weight_bits", None),
            )
        ]

    def param_count(self) -> int:
        """Stored parameters (numbers), the quantity papers compare (a compressed part counts
        its own)."""
        parts = self.compressed_parts()
        own = (p for n, p in self.named_parameters() if _part_of(n, parts) is None)
        return sum(p.numel() for p in own) + sum(p.param_count() for p in parts.values())


def _part_of(key: str, parts: dict[str, Any]) -> str | None:
    """The part a state-dict key belongs to, if any."""
    return next((n for n in parts if key.startswith(n + ".")), None)
