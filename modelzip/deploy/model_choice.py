"""The whole-model choice: the per-layer choice against every layer in static int8 (uint8 between
them) and every layer dense, each built, chained and checked, timed on the sample in its memory
layouts; a layer timed alone does not see the conversions its neighbours' choices add.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from modelzip.core.compact_source import DEPLOYED_ATTR, remember_source
from modelzip.core.context import replace_module
from modelzip.core.module import CompressedModule
from modelzip.deploy import timing
from modelzip.deploy.chains import link_int8_chain
from modelzip.deploy.layer_choice import Pick
from modelzip.deploy.layout import has_conv, to_channels_last
from modelzip.deploy.report import TOLERANCE, MaterializeReport, rel_error

#: The whole-model candidates :func:`~modelzip.deploy.materialize` times against each other on
#: the sample.
PER_LAYER, STATIC_INT8, DENSE = "per-layer", "static int8", "dense"


Variant = dict[str, tuple[nn.Module, str]]


def variants_of(picks: list[Pick]) -> dict[str, Variant]:
    """The whole-model candidates, layer name → (module, form): each layer's own fastest form
    (:data:`PER_LAYER`); every layer that has a static int8 form in it, so that uint8 flows
    between them (:data:`STATIC_INT8`: a layer timed alone does not see the float conversions
    its neighbours' choices add); every layer dense (:data:`DENSE`). Each layer without such a
    form keeps its own choice; a candidate equal to the per-layer one is left out."""
    per_layer = {p.name: (p.chosen, p.entry.form) for p in picks}
    out = {PER_LAYER: per_layer}
    for key, wanted in (
        (STATIC_INT8, lambda k: "static" in k),
        (DENSE, lambda k: k.split(":")[-1] == "dense"),  # "int8:dense": dequantized int8
    ):
        variant = dict(per_layer)
        for p in picks:
            # The fastest of the layer's forms of this kind (measured alone); a static int8
            # layer itself counts as its own static int8 form (speedup 1, kept on a tie).
            form = max((f for f in p.forms if wanted(f.kind)), key=lambda f: f.speedup,
                       default=None)  # fmt: skip
            own = key == STATIC_INT8 and _static_int8(p.module)
            if form is not None and not (own and form.speedup <= 1.0):
                variant[p.name] = (form.module, form.kind)
            elif own:
                variant[p.name] = (p.module, "")  # a static int8 layer itself
        if any(variant[n][0] is not per_layer[n][0] for n in per_layer):
            out[key] = variant
    return out


def _static_int8(module: nn.Module) -> bool:
    """Whether ``module`` is itself a static int8 layer (runs its own int8 kernel)."""
    own = getattr(type(module), "runs_own_kernel", False)
    return bool(own) and getattr(module, "activations", "") == "static"


def assemble(model: nn.Module, variant: Variant, picks: list[Pick], *, copy_layers: bool) -> None:
    """Replace ``model``'s layers (in place) by the forms of ``variant``; a deployed model."""
    for p in picks:
        new, form = variant[p.name]
        if new is p.module:
            continue
        new = copy.deepcopy(new) if copy_layers else new  # each candidate links its own layers
        remember_source(new, p.module, form)
        replace_module(model, p.name, new)  # every alias of a shared layer
    for p in model.parameters():  # an inference model: the kernels have no backward
        p.requires_grad_(False)
    model.__dict__[DEPLOYED_ATTR] = True


def tolerance_of(model: nn.Module) -> float:
    """The model-level tolerance: the int8 one when int8 activations round anywhere (a
    compressed layer whose activation policy is ``"static"`` or ``"dynamic"``,
    :class:`~modelzip.kernels.int8.Int8Format`; deploy sits below the kernels)."""
    quantized = any(
        isinstance(m, CompressedModule) and getattr(m, "activations", "") in ("static", "dynamic")
        for m in model.modules()
    )
    return TOLERANCE["int8" if quantized else "float"]


def _layouts(
    model: nn.Module, sample: torch.Tensor, ref: Any, layout: str, tolerance: float = 0.0
) -> list[tuple[str, nn.Module]]:
    """``model`` in the memory layouts to time: NCHW and, when it has 4-D weights and agrees
    (within ``tolerance`` or its own), a channels-last copy; the one asked for when ``layout``
    is not ``"measured"``."""
    if not has_conv(model) or layout == "contiguous":
        return [("contiguous", model)]
    if layout == "channels_last":
        return [("channels_last", to_channels_last(model))]
    candidate = to_channels_last(copy.deepcopy(model))
    try:
        with torch.no_grad():
            err = rel_error(candidate(sample), ref)
    except (RuntimeError, ValueError):
        return [("contiguous", model)]
    if err > max(tolerance, tolerance_of(model)):
        return [("contiguous", model)]
    return [("contiguous", model), ("channels_last", candidate)]


def choose_model(
    model: nn.Module,
    others: dict[str, tuple[nn.Module, Variant]],
    picks: list[Pick],
    args: tuple[Any, ...],
    ref: Any,
    layout: str,
    reps: int,
    report: MaterializeReport,
    tolerance: float,
) -> nn.Module:
    """The fastest correct whole model on the sample among ``model`` (the per-layer choice,
    chained) and the ``others`` (:func:`variants_of`, built and chained here), each in its
    memory layouts, timed interleaved; ``report`` says which won, and its layers' forms."""
    sample = args[0]
    reports = {PER_LAYER: report}
    built: dict[str, nn.Module] = {PER_LAYER: model}
    for key, (work, variant) in others.items():
        assemble(work, variant, picks, copy_layers=True)
        reports[key] = MaterializeReport([])
        work = link_int8_chain(work, args, ref, reports[key])
        try:
            with torch.no_grad():
                err = rel_error(work(*args), ref)
        except (RuntimeError, ValueError, TypeError):
            continue  # a candidate the model's own code cannot run (a .view of NHWC int8)
        if err <= max(tolerance, tolerance_of(work)):
            built[key] = work
    timed = [
        (key, kind, m)
        for key, m in built.items()
        for kind, m in _layouts(m, sample, ref, layout, tolerance)
        # The per-layer model ran on the sample already; a copy in another layout may not
        # (its code .views an NHWC tensor), nor any candidate under inference mode.
        if (key == PER_LAYER and m is model) or _runs_timed(m, sample)
    ]
    times = timing.time_interleaved(
        [m for _, _, m in timed], sample, reps=2 * max(reps, 5), warmup=2, min_seconds=0.3,
        max_reps=20 * max(reps, 5), grad="inference", settle=timing.SETTLE,
    )  # fmt: skip
    best = min(range(len(timed)), key=lambda i: times[i].median)
    key, kind, winner = timed[best]
    for (k, _, _), t in zip(timed, times, strict=True):
        report.model_ms[k] = round(min(report.model_ms.get(k, t.ms), t.ms), 3)
    report.model_choice = key
    chosen = reports[key]
    report.int8_links, report.int8_chain = chosen.int8_links, chosen.int8_chain
    report.layout = kind
    same = [t for (k, _, _), t in zip(timed, times, strict=True) if k == key]
    if len(same) > 1:
        ratio = max(t.median for t in same) / times[best].median
        report.layout_reason = f"measured {ratio:.2f}× faster than the other layout"
    else:
        report.layout_reason = (
            "asked for" if layout != "measured" else "the only layout that agrees"
        )
    if key != PER_LAYER:
        _note_variant(others[key][1], picks, key)
    summary = ", ".join(f"{k} {ms:.2f} ms" for k, ms in report.model_ms.items())
    report.note = f"whole model: {key} kept ({summary})"
    static_ms = report.model_ms.get(STATIC_INT8)
    if key != STATIC_INT8 and static_ms is not None:
        # Said in words: the int8 engine lost to float on this CPU (small layers, no VNNI).
        slower = static_ms / report.model_ms[key]
        report.note += f"; static int8 measured {slower:.2f}× slower here: not kept"
        if any(f.endswith("int8:dense") for _, f in (others.get(key, (None, {}))[1]).values()):
            report.note += " (int8 weights dequantized, run in float)"
    if report.int8_chain:
        report.note += f"; int8 chain: {report.int8_chain}"
    if key != PER_LAYER:
        report.sparse_chain = ""  # the per-layer candidate's, which lost
    elif report.sparse_chain:
        report.note += f"; sparse chain: {report.sparse_chain}"
    if key != PER_LAYER:
        report.xnor_inputs = ""
    elif report.xnor_inputs:
        report.note += f"; XNOR inputs: {report.xnor_inputs}"
    if key != PER_LAYER:
        report.int8_runs = ""
    elif report.int8_runs:
        report.note += f"; int8 linears: {report.int8_runs}"
    if kind == "channels_last" and winner is model:
        return to_channels_last(model)
    return winner


def _runs_timed(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether ``model`` runs under inference mode, as it is timed (a quantized output that the
    model's code ``.view``s may fail there and not under ``no_grad``)."""
    try:
        with torch.inference_mode():
            model(sample)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _note_variant(variant: Variant, picks: list[Pick], key: str) -> None:
    """The layer entries of a whole-model candidate that won: each layer's form in it."""
    for p in picks:
        new, form = variant[p.name]
        if new is p.chosen:
            continue
        entry = p.entry
        if new is p.module:  # the layer itself (a static int8 layer in the uint8 chain)
            entry.after, entry.kernel, entry.form = entry.before, "unchanged", ""
            entry.speedup, entry.max_rel_error = 1.0, None
            entry.reason = f"whole model {key} measured fastest (the layer itself)"
            continue
        found = next(f for f in p.forms if f.module is new)
        entry.after, entry.kernel, entry.form = type(new).__name__, form.split(":")[-1], form
        entry.speedup, entry.max_rel_error = found.speedup, found.error
        entry.reason = f"whole model {key} measured fastest ({found.speedup:.2f}× alone)"
