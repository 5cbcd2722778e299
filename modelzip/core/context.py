"""What a method handler may use besides the layer and its config, and the record of the run.

Every change to the model being compressed goes through :meth:`Context.replace` (a swap of one
module) or :meth:`Context.record` (a change made another way: coupled layers resized, a BN folded
away), and every layer left alone through :meth:`Context.skip`. One path means one set of rules:
a shared layer stays one object under all its names, a layer whose parent reads its weight
tensor directly is not swapped for one without that tensor, and each change is reported once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from modelzip.core.changes import LayerChange, LayerSize, SkippedLayer
from modelzip.core.linear_like import is_transposed_linear, linear_view
from modelzip.core.module import CompressedModule

#: Modules whose forward reads their layers' ``.weight`` tensors directly (torch's fused
#: attention and transformer fast paths) instead of calling the layers; found by
#: tests/reliability/test_wild_models.py, where replacing ``linear1`` broke the forward pass.
WEIGHT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@dataclasses.dataclass
class Context:
    """Shared state of one :func:`modelzip.compress` call.

    Attributes
    ----------
    data:
        The data set given to ``compress`` (a :class:`modelzip.data.Dataset` or ``TextCorpus``),
        or None. Data-driven methods (calibration, Taylor importance) refuse to run without it.
    sample:
        A small batch of model inputs on the model's device (calibration, output checks), or None.
    seed:
        Seed for methods that draw random numbers (stochastic rounding, random pruning).
    model:
        The whole model being compressed (read-only for layer handlers; model handlers change it
        through :meth:`replace` and :meth:`record`).
    notes:
        Remarks about layers (:meth:`note`), moved into the layer's change when it is recorded.
    changes, skipped:
        What the run changed and left alone, in order; the Report is built from them.
    """

    data: Any = None
    sample: torch.Tensor | None = None
    seed: int = 0
    model: nn.Module | None = None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    changes: list[LayerChange] = dataclasses.field(default_factory=list)
    skipped: list[SkippedLayer] = dataclasses.field(default_factory=list)
    _reads: dict[str, str] | None = dataclasses.field(default=None, repr=False)

    def note(self, layer: str, text: str) -> None:
        """Record a remark about a layer (shown in the Report)."""
        self.notes[layer] = text

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded with :attr:`seed`."""
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def _model(self) -> nn.Module:
        if self.model is None:
            raise ValueError("this Context has no model: replace and record need Context.model")
        return self.model

    def refusal(self, name: str, new: nn.Module | None, *, tied: bool = False) -> str | None:
        """Why ``new`` may not stand in for the layer at ``name``, or None when it may.

        Under a :data:`WEIGHT_READERS` parent (under any of the layer's names) the parent's fast
        path reads the layer's ``.weight`` instead of calling it, so the replacement must hold, as
        its ``.weight``, the weight it computes with: same shape, and for a compressed layer the
        weight of its dense form (a masked layer's zeroed weight is; a fake-quantized layer's
        float weight is not). ``new=None`` asks about a replacement not built yet that will hold
        no dense weight, for handlers that must drop such layers before they work on the others.

        A layer whose weight tensor another layer holds too (a language model's output layer
        tied to its token embedding) is refused as well, unless ``tied``: the caller replaces
        the whole tie group with layers sharing one compressed weight
        (:func:`modelzip.api.compress`'s layer loop does).
        """
        model = self._model()
        old = model.get_submodule(name)
        if not tied:
            partners = tied_to(model, old)
            if partners:
                return (
                    f"its weight is tied to {', '.join(map(repr, partners))} (one tensor); "
                    f"a {type(new).__name__ if new is not None else 'compressed layer'} of its "
                    "own would store that weight twice"
                )
        readers = (weight_reader(model, alias) for alias in aliases(model, old) or [name])
        reader = next((r for r in readers if r is not None), None) or self._direct_reader(name)
        if reader is None:
            return None
        intro = f"inside {reader}, whose forward reads the layer's weight tensor directly"
        if new is None or not _keeps_weight(new, old):
            what = f"a {type(new).__name__}" if new is not None else "the compressed layer"
            shape = tuple(getattr(old, "weight", torch.empty(0)).shape)
            return f"{intro}; {what} has no weight of shape {shape}"
        if not _weight_is_computed(new):
            return f"{intro}; a {type(new).__name__} computes with another weight than its .weight"
        return None

    def _direct_reader(self, name: str) -> str | None:
        """The module whose code reads the layer's weight directly (found by running the model on
        :attr:`sample` once, :mod:`modelzip.core.weight_reads`), if any."""
        if self._reads is None:
            from modelzip.core.weight_reads import direct_weight_reads

            self._reads = direct_weight_reads(self._model(), self.sample)
        return self._reads.get(name)

    def replace(
        self,
        name: str,
        new: nn.Module,
        *,
        method: str,
        note: str | None = None,
        tied: bool = False,
    ) -> bool:
        """Put ``new`` in place of the layer at ``name`` and record the change once.

        Refused by :meth:`refusal` it records a skip instead. Every name of the old layer gets
        ``new`` (:func:`replace_module`), so a shared layer stays shared; reaching ``new`` again
        under another name records nothing more. Returns whether ``new`` stands at ``name``.
        """
        old = self._model().get_submodule(name)
        if new is old:  # already placed (under another name), or nothing changed
            return True
        reason = self.refusal(name, new, tied=tied)
        if reason is not None:
            self.skip(name, method, reason)
            return False
        replace_module(self._model(), name, new)
        retie(self._model(), old, new)
        self.record(name, old, new, method=method, note=note)
        return True

    def record(
        self,
        name: str,
        before: nn.Module | LayerSize,
        after: nn.Module,
        *,
        method: str,
        note: str | None = None,
    ) -> LayerChange:
        """Record a change a handler made itself (coupled layers resized, a BN folded away).

        ``before`` is the layer as it was, or its :class:`LayerSize` when the handler changed the
        object in place. The note is ``note`` joined with any :meth:`note` left for ``name``.
        """
        size = before if isinstance(before, LayerSize) else LayerSize.of(before)
        after_size = LayerSize.of(after)
        remarks = (note or "", self.notes.pop(name, ""))
        change = LayerChange(
            name=name,
            method=method,
            before=size.kind,
            after=after_size.kind,
            params_before=size.params,
            params_after=after_size.params,
            bytes_before=size.bytes,
            bytes_after=after_size.bytes,
            note="; ".join(r for r in remarks if r),
        )
        self.changes.append(change)
        return change

    def skip(self, name: str, method: str, reason: str) -> None:
        """Record that ``method`` left the selected layer ``name`` alone, and why."""
        self.notes.pop(name, None)
        self.skipped.append(SkippedLayer(name, method, reason))


def _keeps_weight(new: nn.Module, old: nn.Module) -> bool:
    weight, old_weight = getattr(new, "weight", None), getattr(old, "weight", None)
    return (
        isinstance(weight, torch.Tensor)
        and isinstance(old_weight, torch.Tensor)
        and weight.shape == old_weight.shape
    )


def _weight_is_computed(new: nn.Module) -> bool:
    """Whether ``new.weight`` is the weight ``new`` computes with (its dense form's weight)."""
    if not isinstance(new, CompressedModule):
        return True  # a plain layer computes with its parameters
    try:
        dense = new.to_dense()
    except NotImplementedError:
        return False
    weight = getattr(dense, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != new.weight.shape:
        return False
    with torch.no_grad():
        return bool(torch.equal(weight.to(new.weight), new.weight))


def retie(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Point other modules that held ``old``'s bias (or another parameter ``new`` keeps under
    the same name and shape) at ``new``'s: BERT's prediction head holds its decoder's bias
    itself, and a copy would leave it a second, unused tensor."""
    for attr, tensor in old.named_parameters(recurse=False):
        kept = getattr(new, attr, None)
        if kept is tensor or not isinstance(kept, nn.Parameter) or kept.shape != tensor.shape:
            continue
        for module in model.modules():
            for key, p in list(module._parameters.items()):
                if p is tensor and module is not new:
                    module._parameters[key] = kept


def tied_to(model: nn.Module, module: nn.Module) -> list[str]:
    """Names of the other layers holding ``module``'s weight tensor itself (tied weights)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter):
        return []
    return [
        n
        for n, m in model.named_modules()
        if m is not module and getattr(m, "weight", None) is weight
    ]


def weight_reader(model: nn.Module, name: str) -> str | None:
    """The type name of an ancestor of layer ``name`` that reads its weight directly, if any."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = model.get_submodule(".".join(parts[:i]))
        if isinstance(parent, WEIGHT_READERS):
            return type(parent).__name__
    return None


def aliases(model: nn.Module, module: nn.Module) -> list[str]:
    """Every name under which ``module`` appears in ``model`` (a shared layer has several)."""
    return [n for n, m in model.named_modules(remove_duplicate=False) if m is module]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> list[str]:
    """Put ``new`` in place of the module at ``name`` under every name that module has.

    A layer used twice (``nn.Sequential(fc, act, fc)``) is one object under two names; replacing
    only the name a handler selected would leave the other calling the old layer, so the model
    would compute something its Report does not describe. Every alias gets the same ``new``
    object, so a shared layer stays shared. Returns the names replaced (``name`` first).
    """
    old = model.get_submodule(name)
    names = [name] + [n for n in aliases(model, old) if n != name]
    for n in names:
        model.set_submodule(n, new)
    return names


def linear_views(model: nn.Module) -> list[str]:
    """Replace every transposed-weight Linear of ``model`` (under all its names) by its
    :func:`linear_view`, in place; the names replaced. The outputs stay the same up to float
    rounding (one product in another memory order)."""
    done: list[str] = []
    for name, module in list(model.named_modules()):
        if name and is_transposed_linear(module):
            done += replace_module(model, name, linear_view(module))
    return done


def layer_name(module: nn.Module, ctx: Any) -> str:
    """The module's name inside ``ctx.model`` (for error messages), or its type name."""
    model = getattr(ctx, "model", None)
    if model is not None:
        for name, sub in model.named_modules():
            if sub is module:
                return name or "<model>"
    return type(module).__name__
