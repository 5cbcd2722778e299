"""The per-layer choice: each layer's executable forms checked against it on the input it saw and
timed against it, the fastest correct one (or the compressed kernel, when asked) taken.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from modelzip.core.context import weight_reader
from modelzip.core.forms import candidates, declared_forms
from modelzip.core.module import CompressedModule
from modelzip.deploy import timing
from modelzip.deploy.report import TOLERANCE, LayerMaterialization, rel_error


@dataclasses.dataclass
class LayerForm:
    """One executable form of a layer that passed the check: its kind, the built layer, its
    error on the layer's sample input and its speed over the compressed layer, measured alone."""

    kind: str
    module: nn.Module
    error: float
    speedup: float


@dataclasses.dataclass
class Pick:
    """A candidate layer of the model, the form chosen for it alone and its other forms."""

    name: str
    module: nn.Module
    chosen: nn.Module
    entry: LayerMaterialization
    forms: list[LayerForm]


def deployable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers that offer an executable form (their class declares one), outside compressed
    layers: a compressed layer is one unit, and the torch layers it is built of (a Tucker-2
    conv's 1×1 factors, a pruned factor) are its own business. Nor under a parent that reads the
    layer's ``.weight`` instead of calling it (:data:`~modelzip.core.context.WEIGHT_READERS`):
    a kernel form holds no dense weight for it to read."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in inside):
            continue
        if declared_forms(module) and weight_reader(model, name) is None:
            out.append((name, module))
        if isinstance(module, CompressedModule) and module.leaf:
            inside.append(name + ".")
    return out


def choose_form(
    name: str, module: nn.Module, x: torch.Tensor | None, reps: int, choose: str
) -> tuple[nn.Module, LayerMaterialization, list[LayerForm]]:
    """``module``'s fastest correct form (or the compressed one, or ``module``), its report
    entry and every form that passed the check, measured on ``x``."""
    before = type(module).__name__
    entry = LayerMaterialization(name, before, before, "unchanged", "no faster form")
    options = candidates(module, x)
    if not options:
        if type(module) in (nn.Linear, nn.Conv2d):
            entry.reason = "dense weights (not ±α per row)"
        return module, entry, []
    own = bool(getattr(type(module), "runs_own_kernel", False))
    if x is None and own:  # no sample: the layer runs its compressed kernel itself
        entry.reason = "no sample: compressed kernel (the layer itself) kept unmeasured"
        return module, entry, []
    if x is None:  # no sample: take the compressed kernel (the last option) unchecked
        kind, build = options[-1]
        new = build()
        entry.after, entry.kernel, entry.form = type(new).__name__, kind.split(":")[-1], kind
        entry.reason = "no sample: compressed kernel taken unmeasured"
        return new, entry, []
    with torch.no_grad():
        ref = module(x)
    built: list[tuple[str, nn.Module]] = []
    errors: dict[int, float] = {}  # by id of the built module
    for kind, build in options:
        try:
            new = build().eval()
            with torch.no_grad():
                err = rel_error(new(x), ref)
        except (RuntimeError, ValueError, TypeError) as e:
            entry.reason = f"{kind} failed: {e}"
            continue
        tol = TOLERANCE[kind.split(":")[0]]
        if err > tol:
            entry.reason = f"{kind} disagrees (rel. error {err:.1e} > {tol:.0e}): kept"
            continue
        built.append((kind, new))
        errors[id(new)] = err
    times = timing.time_medians([module] + [m for _, m in built], x, reps)
    t_ref, best_t, best = times[0], times[0], module
    for (kind, new), t_new in zip(built, times[1:], strict=True):
        if t_new < best_t:
            best, best_t = new, t_new
            entry.after, entry.kernel, entry.form = type(new).__name__, kind.split(":")[-1], kind
            entry.reason = f"measured {t_ref / t_new:.2f}× faster than {before}"
    asked_self = choose == "compressed" and own
    if asked_self:  # the layer is the compressed kernel: kept, however fast its forms are
        best, best_t = module, t_ref
        entry.after, entry.kernel, entry.form = before, "unchanged", ""
    elif choose == "compressed" and built and best is not built[-1][1]:
        (kind, best), best_t = built[-1], times[-1]
        entry.after, entry.kernel, entry.form = type(best).__name__, kind.split(":")[-1], kind
        entry.reason = f"compressed kernel asked for ({t_ref / best_t:.2f}× the speed)"
    if best is module and built:
        entry.reason = "measured: " + ", ".join(
            f"{k.split(':')[-1]} {t_ref / t:.2f}×"
            for (k, _), t in zip(built, times[1:], strict=True)
        )
        entry.reason += f" the speed of {before}: kept"
        if asked_self:
            entry.reason = "compressed kernel (the layer itself) asked for; " + entry.reason
    entry.speedup = t_ref / best_t
    entry.max_rel_error = errors.get(id(best))
    forms = [
        LayerForm(kind, new, errors[id(new)], t_ref / t)
        for (kind, new), t in zip(built, times[1:], strict=True)
    ]
    return best, entry, forms
