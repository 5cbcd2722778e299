"""``materialize(model)``: compressed modules → the fastest executable form this CPU has.

Each layer class declares the forms it offers (``executable_forms``, built by
:mod:`modelzip.kernels.forms`); by class, so an attribute that happens to share a name (the
``codes`` and ``scale`` of a k-bit :class:`~modelzip.quantize.layers.QuantLinear`) does not make
a layer int8. Today:

=============================================  ==============================================
masked layer (``Masked*``)                      :class:`SparseLinear`/:class:`SparseConv2d`
                                                (BSR when the zeros form blocks, else CSR) if
                                                measured faster on the sample, else plain dense
int8 layer (``Int8Linear``/``Int8Conv2d``)      PyTorch's x86 int8 kernels (dynamic activations)
static int8 layer (``StaticInt8*``)             kept (the int8 engine), or its weights
                                                dequantized into the float layer when measured
                                                faster (int8 tolerance: no activation rounding)
``nn.Linear``/``nn.Conv2d`` with ``±α`` rows    :class:`BinaryLinear`/:class:`BinaryConv2d`:
                                                XNOR-popcount when the sample's inputs are ±1,
                                                else BWN (adds/subtracts)
factorized layer (``tt_cores``/``ht_factors``)  kept factorized (MAC-minimal einsum), cut
                                                into two GEMMs (:class:`SplitLinear`), a TT-conv
                                                fused per 16-pixel tile (:class:`FusedTTConv2d`,
                                                AVX-512) or made dense, whichever is measured
                                                faster
fake-quantized layer (``FakeQuant*``)           its weights quantized once (frozen), or for a
                                                linear with k-bit inputs (``act_bits`` ≤ 8)
                                                :class:`BitSerialLinear` (AND-popcount over bit
                                                planes), whichever is measured faster (no
                                                bit-serial conv yet)
=============================================  ==============================================

With a sample batch every replacement is checked against the original layer on the input that
layer saw, reverted if it disagrees, and the whole model's output is compared at the end.
Two choices are made for the whole model, as no layer alone can show they pay: static int8
layers hand each other uint8 (the int8 chain), and runs of pruned linears in CSR run as one
compiled call skipping zero activations (:mod:`modelzip.kernels.sparse_chain`, EIE's batch-1
product), kept when the whole model is measured faster on the sample.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from modelzip.core.compact_source import (
    DEPLOYED_ATTR,
    LAYOUT_ATTR,
    SOURCE_ATTR,
    compact_source,
    remember_source,
)
from modelzip.core.context import replace_module, weight_reader
from modelzip.core.forms import candidates, declared_forms
from modelzip.core.model_links import model_link, unlink
from modelzip.core.module import CompressedModule
from modelzip.core.running import model_device
from modelzip.core.timing import Timing, time_interleaved

# Relative tolerance (to the output's largest magnitude) per kind of kernel: integer kernels are
# exact, float kernels reorder sums, dynamic int8 quantizes the activations to 8 (7) bits.
TOLERANCE = {"exact": 1e-5, "float": 1e-4, "int8": 5e-2, "dense": 1e-5}


@dataclasses.dataclass
class LayerMaterialization:
    """What :func:`materialize` did with one layer."""

    name: str
    before: str
    after: str
    kernel: str
    reason: str
    max_rel_error: float | None = None
    speedup: float | None = None
    #: The chosen executable form's kind (``"float:CSR"``, ``"dense"`` ...), "" when unchanged.
    form: str = ""


@dataclasses.dataclass
class MaterializeReport:
    """Per-layer actions and the model-level check (``max_rel_error`` on the sample)."""

    layers: list[LayerMaterialization]
    max_rel_error: float | None = None
    layout: str = "contiguous"
    layout_reason: str = "not measured"
    #: Static int8 layers and adds passing uint8 on (:mod:`modelzip.quantize.int8_chain`).
    int8_links: int = 0
    int8_chain: str = ""
    #: Runs of sparse linears run as one call (:mod:`modelzip.kernels.sparse_chain`).
    sparse_chain: str = ""
    #: The whole-model candidate kept (``"per-layer"``, ``"static int8"``, ``"dense"``) and each
    #: candidate's median milliseconds on the sample (in its faster layout); empty when there was
    #: one candidate only.
    model_choice: str = ""
    model_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    #: A line on the deployment as a whole: why nothing was deployed (a model off the CPU), or
    #: which whole-model candidate won and the int8 chain (what a Report's ``deploy_note`` shows).
    note: str = ""

    def rows(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(layer) for layer in self.layers]

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'before':<14} {'after':<20} {'speedup':>8} {'rel.err':>9}  why"]
        for r in self.layers:
            sp = f"{r.speedup:.2f}×" if r.speedup is not None else "-"
            err = f"{r.max_rel_error:.1e}" if r.max_rel_error is not None else "-"
            lines.append(f"{r.name:<24} {r.before:<14} {r.after:<20} {sp:>8} {err:>9}  {r.reason}")
        lines.append(f"memory layout: {self.layout} ({self.layout_reason})")
        if self.int8_chain and not self.model_choice:
            lines.append(f"int8 chain: {self.int8_chain}")
        if self.sparse_chain:
            lines.append(f"sparse chain: {self.sparse_chain}")
        if self.note:
            lines.append(self.note)
        if self.max_rel_error is not None:
            lines.append(f"model output: max relative error {self.max_rel_error:.2e}")
        return "\n".join(lines)


def _rel_error(y: Any, ref: Any) -> float:
    """Largest absolute difference over the largest magnitude of ``ref``; outputs may be nested
    tuples (an RNN's ``(output, (h, c))``), compared leaf by leaf."""
    ys, refs = tree_leaves(y), tree_leaves(ref)
    if len(ys) != len(refs):
        return float("inf")
    worst = 0.0
    for a, b in zip(ys, refs, strict=True):
        if not isinstance(b, torch.Tensor) or b.numel() == 0:
            continue
        scale = float(b.detach().abs().max()) or 1.0
        worst = max(worst, float((a.detach().float() - b.detach().float()).abs().max()) / scale)
    return worst


def _time_interleaved(modules: list[nn.Module], x: torch.Tensor, reps: int) -> list[float]:
    """Median seconds of ``m(x)`` for each module, interleaved and warm (the first call of each
    is timed apart and left out), so that a busy machine slows all candidates alike."""
    return [t.median for t in time_interleaved(modules, x, reps=reps, warmup=2)]


def dense_anchor(model: nn.Module, sample: Any) -> nn.Module:
    """The dense original as the speed anchor: in its own fastest memory layout on this CPU
    (measured as :func:`materialize` measures a deployed model's), so that a speedup is what the
    compression buys, not channels-last. A copy when the layout changes; else ``model``."""
    if not _has_conv(model) or not isinstance(sample, torch.Tensor):
        return model
    work = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = work(sample)
    chosen = _choose_layout(work, sample, ref, "measured", 5, MaterializeReport([]))
    return chosen if chosen.__dict__.get(LAYOUT_ATTR) == "channels_last" else model


def time_against(
    reference: nn.Module, model: nn.Module, sample: Any, *, repeats: int = 15
) -> tuple[Timing, Timing]:
    """``reference`` (the dense original) and ``model`` timed side by side on ``sample``:
    interleaved rounds, three warm-up calls each (the first timed apart as the cold call), then
    at least ``repeats`` rounds and 0.3 s, in eval and inference mode (modes restored)."""
    modes = [(m, m.training) for m in (reference, model)]
    for m, _ in modes:
        m.eval()
    try:
        timings = time_interleaved(
            [reference, model],
            sample,
            reps=repeats,
            warmup=3,
            min_seconds=0.3,
            max_reps=10 * repeats,
            grad="inference",
        )
    finally:
        for m, mode in modes:
            m.train(mode)
    return timings[0], timings[1]


def materialize(
    model: nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    inplace: bool = False,
    reps: int = 5,
    choose: Literal["measured", "compressed"] = "measured",
    layout: Literal["measured", "contiguous", "channels_last"] = "measured",
) -> tuple[nn.Module, MaterializeReport]:
    """Turn compressed layers into their fastest executable form on this CPU.

    Parameters
    ----------
    model:
        A model with compressed layers (masked, int8, binarized, TT/HT); it is copied unless
        ``inplace``.
    sample:
        An input batch. With it, choices between kernels are measured on the input each layer
        actually sees (median of ``reps`` interleaved runs) and every replacement is checked
        against the layer it replaces; without it, every recognised layer takes its compressed
        kernel unchecked (binary layers take BWN).
    choose:
        ``"measured"``: each layer takes its fastest correct form; ``"compressed"``: the
        compressed kernel whenever it passes the check, even if measured slower (for memory, or
        on a machine too busy to time).
    layout:
        Memory format of a model with 4-D conv weights: ``"measured"`` times the whole model in
        NCHW and in channels-last on the sample and keeps the faster (oneDNN's NHWC kernels are
        often faster at small channel counts); the others force one. Models without convs, and
        ``"measured"`` without a sample, stay contiguous.

    Returns
    -------
    (model, report):
        The executable model (eval mode, parameters frozen: the kernels are inference-only) and
        a :class:`MaterializeReport`.
    """
    if layout not in ("measured", "contiguous", "channels_last"):
        raise ValueError(
            f"layout={layout!r} is not allowed; allowed: 'measured', 'contiguous', 'channels_last'"
        )
    model = model if inplace else copy.deepcopy(model)
    given = model
    model.eval()
    device = model_device(model)
    if device.type != "cpu":  # the kernels (Numba, the native builds) run on the CPU alone
        note = f"not deployed: the model is on {device.type}; modelzip's kernels run on the CPU"
        return model, MaterializeReport([], note=note)
    inputs: dict[str, torch.Tensor] = {}
    args = sample if isinstance(sample, tuple) else (sample,)
    ref = None
    if sample is not None:

        def recorder(n: str) -> Callable[..., None]:
            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
                inputs.setdefault(n, inp[0].detach())  # a hook's return value replaces output

            return hook

        hooks = [m.register_forward_hook(recorder(n)) for n, m in _candidates(model)]
        with torch.no_grad():
            ref = model(*args)
        for h in hooks:
            h.remove()
    report = MaterializeReport([])
    picks: list[_Pick] = []
    for name, module in _candidates(model):
        chosen, entry, built = _choose(name, module, inputs.get(name), reps, choose)
        report.layers.append(entry)
        picks.append(_Pick(name, module, chosen, entry, built))
    measured = ref is not None and choose == "measured" and isinstance(sample, torch.Tensor)
    variants = _variants(picks) if measured else {}
    # Every whole-model candidate is checked against the compressed model's own tolerance (a
    # static int8 model's dense candidate rounds no activations, and differs by that much).
    tolerance = _tolerance(model)
    # The other whole-model candidates are built on copies of the model taken before the
    # per-layer choice replaces its layers (which it does in place, as before).
    others = {k: (copy.deepcopy(model), v) for k, v in variants.items() if k != PER_LAYER}
    _assemble(model, {p.name: (p.chosen, p.entry.form) for p in picks}, picks, copy_layers=False)
    model = _chain(model, args if sample is not None else None, ref, report)
    if sample is not None and ref is not None:
        model = _sparse_runs(model, picks, args, ref, reps, choose, report)
    if not others:
        model = _choose_layout(model, sample, ref, layout, reps, report)
    else:
        model = _choose_model(model, others, picks, args, ref, layout, reps, report, tolerance)
    if ref is not None:
        with torch.no_grad():
            report.max_rel_error = _rel_error(model(*args), ref)
    return (_into(given, model) if inplace else model), report


def _into(given: nn.Module, chosen: nn.Module) -> nn.Module:
    """For ``inplace``: the deployed layers of ``chosen`` (a whole-model candidate built on a
    copy, or a linked GraphModule's eager model) put into ``given``, the caller's own object,
    which is returned; or the linked GraphModule, now running ``given``'s layers (the caller's
    model is deployed in place; the links are a wrapper around it)."""
    eager = chosen.__dict__.get("_modelzip_eager", chosen)
    if eager is not given:
        for name, child in eager._modules.items():  # every name (named_children skips aliases)
            setattr(given, name, child)
        given.__dict__.update(
            {k: v for k, v in eager.__dict__.items() if k.startswith("_modelzip_")}
        )
    if eager is chosen:
        return given
    chosen.__dict__["_modelzip_eager"] = given
    return chosen


#: The whole-model candidates :func:`materialize` times against each other on the sample.
PER_LAYER, STATIC_INT8, DENSE = "per-layer", "static int8", "dense"


@dataclasses.dataclass
class _Form:
    """One executable form of a layer that passed the check: its kind, the built layer, its
    error on the layer's sample input and its speed over the compressed layer, measured alone."""

    kind: str
    module: nn.Module
    error: float
    speedup: float


@dataclasses.dataclass
class _Pick:
    """A candidate layer of the model, the form chosen for it alone and its other forms."""

    name: str
    module: nn.Module
    chosen: nn.Module
    entry: LayerMaterialization
    forms: list[_Form]


Variant = dict[str, tuple[nn.Module, str]]


def _variants(picks: list[_Pick]) -> dict[str, Variant]:
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
            form = next((f for f in p.forms if wanted(f.kind)), None)
            if form is not None:
                variant[p.name] = (form.module, form.kind)
            elif key == STATIC_INT8 and _static_int8(p.module):
                variant[p.name] = (p.module, "")  # a static int8 layer itself
        if any(variant[n][0] is not per_layer[n][0] for n in per_layer):
            out[key] = variant
    return out


def _static_int8(module: nn.Module) -> bool:
    """Whether ``module`` is itself a static int8 layer (runs its own int8 kernel)."""
    own = getattr(type(module), "runs_own_kernel", False)
    return bool(own) and getattr(module, "activations", "") == "static"


def _assemble(model: nn.Module, variant: Variant, picks: list[_Pick], *, copy_layers: bool) -> None:
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


def _tolerance(model: nn.Module) -> float:
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
    if not _has_conv(model) or layout == "contiguous":
        return [("contiguous", model)]
    if layout == "channels_last":
        return [("channels_last", _channels_last(model))]
    candidate = _channels_last(copy.deepcopy(model))
    try:
        with torch.no_grad():
            err = _rel_error(candidate(sample), ref)
    except (RuntimeError, ValueError):
        return [("contiguous", model)]
    if err > max(tolerance, _tolerance(model)):
        return [("contiguous", model)]
    return [("contiguous", model), ("channels_last", candidate)]


def _choose_model(
    model: nn.Module,
    others: dict[str, tuple[nn.Module, Variant]],
    picks: list[_Pick],
    args: tuple[Any, ...],
    ref: Any,
    layout: str,
    reps: int,
    report: MaterializeReport,
    tolerance: float,
) -> nn.Module:
    """The fastest correct whole model on the sample among ``model`` (the per-layer choice,
    chained) and the ``others`` (:func:`_variants`, built and chained here), each in its
    memory layouts, timed interleaved; ``report`` says which won, and its layers' forms."""
    sample = args[0]
    reports = {PER_LAYER: report}
    built: dict[str, nn.Module] = {PER_LAYER: model}
    for key, (work, variant) in others.items():
        _assemble(work, variant, picks, copy_layers=True)
        reports[key] = MaterializeReport([])
        work = _chain(work, args, ref, reports[key])
        try:
            with torch.no_grad():
                err = _rel_error(work(*args), ref)
        except (RuntimeError, ValueError, TypeError):
            continue  # a candidate the model's own code cannot run (a .view of NHWC int8)
        if err <= max(tolerance, _tolerance(work)):
            built[key] = work
    timed = [
        (key, kind, m)
        for key, m in built.items()
        for kind, m in _layouts(m, sample, ref, layout, tolerance)
        if key == PER_LAYER or _runs_timed(m, sample)
    ]
    times = time_interleaved(
        [m for _, _, m in timed], sample, reps=2 * max(reps, 5), warmup=2, min_seconds=0.3,
        max_reps=20 * max(reps, 5), grad="inference",
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
    if kind == "channels_last" and winner is model:
        return _channels_last(model)
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


def _note_variant(variant: Variant, picks: list[_Pick], key: str) -> None:
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


def _chain(
    model: nn.Module, args: tuple[Any, ...] | None, ref: Any, report: MaterializeReport
) -> nn.Module:
    """Link static int8 layers (uint8 between them, residual adds in int8), kept if the model's
    output on the sample still agrees within the int8 tolerance."""
    chain_static_int8, unchain = model_link("int8_chain")
    chained, links, why = chain_static_int8(model)
    if not links:
        report.int8_chain = "" if why.startswith("fewer") else why
        return model
    if args is not None and ref is not None:
        try:
            with torch.no_grad():
                err = _rel_error(chained(*args), ref)
        except (RuntimeError, ValueError, TypeError) as e:
            report.int8_chain = f"unchained: {type(e).__name__}: {str(e)[:120]}"
            return unchain(chained)
        if err > TOLERANCE["int8"]:
            report.int8_chain = f"unchained: output disagrees (rel. error {err:.1e})"
            return unchain(chained)
    report.int8_links = links
    report.int8_chain = f"{links} static int8 layers and adds pass uint8 on"
    return chained


def _sparse_runs(
    model: nn.Module,
    picks: list[_Pick],
    args: tuple[Any, ...],
    ref: Any,
    reps: int,
    choose: str,
    report: MaterializeReport,
) -> nn.Module:
    """A model-level choice the per-layer one cannot make: every pruned linear in CSR with runs
    of them linked into one call (:mod:`modelzip.kernels.sparse_chain`), kept if the whole model
    is measured faster on the sample than the per-layer choice and agrees with it. At batch 1 a
    lone sparse layer saves less than the Python around it costs; a run of them does not."""
    if model.__dict__.get("_modelzip_eager") is not None:  # linked already (int8 chain)
        return model
    # Only pruned linears are candidates (a masked conv's dense form is a Conv2d); the model is
    # copied once there are two of them, not on every deploy.
    sparse = [p for p in picks if "sparse" in declared_forms(p.module)]
    sparse = [p for p in sparse if not isinstance(p.module.to_dense(), nn.Conv2d)]  # type: ignore[operator]
    if len(sparse) < 2:
        return model
    switched = copy.deepcopy(model)
    changed: dict[str, tuple[nn.Module, nn.Module, str]] = {}
    for pick in sparse:  # the compressed layers as they were before the per-layer choice
        options = [(k, b) for k, b in candidates(pick.module, None) if k == "float:CSR"]
        if options:
            new = options[0][1]().eval()
            changed[pick.name] = (new, pick.module, options[0][0])
            replace_module(switched, pick.name, new)
    if len(changed) < 2:
        return model
    for p in switched.parameters():
        p.requires_grad_(False)
    linked, links, _ = model_link("sparse_chain")[0](switched)
    if not links:
        return model
    with torch.no_grad():
        err = _rel_error(linked(*args), ref)
    if err > TOLERANCE["float"]:
        return model
    timings = time_interleaved([model, linked], args, reps=reps, warmup=3, number="auto")
    t_now, t_linked = (t.median for t in timings)
    if t_linked >= t_now and choose != "compressed":
        report.sparse_chain = f"{links} sparse linears as one call: measured slower, not kept"
        return model
    entries = {e.name: e for e in report.layers}
    for name, (new, layer, kind) in changed.items():
        remember_source(new, layer, kind)
        e = entries[name]
        e.after, e.kernel, e.form = type(new).__name__, kind.split(":")[-1], kind
        e.reason = "CSR in a run of sparse linears run as one call"
        e.max_rel_error, e.speedup = err, None  # checked on the whole model's output
    report.sparse_chain = (
        f"{links} sparse linears run as one call: {t_now / t_linked:.2f}× the per-layer choice"
    )
    report.note = f"sparse chain: {report.sparse_chain}"
    return linked


def is_deployed(model: nn.Module) -> bool:
    """Whether ``model`` is a deployed (inference-only) model: the output of :func:`materialize`
    or of :func:`modelzip.load` of a file saved deployed."""
    return bool(model.__dict__.get(DEPLOYED_ATTR))


def trainable(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The trainable form of a deployed model: every deployed layer back to the compressed layer
    it was built from, parameters requiring grad again, contiguous memory layout.

    A model that is not deployed is returned as it is (copied unless ``inplace``).
    :func:`modelzip.compress` calls this first, so a deployed model can take more recipe steps.
    """
    if not is_deployed(model):
        return model if inplace else copy.deepcopy(model)
    model = model if inplace else copy.deepcopy(model)
    # Unlinked first: a chained GraphModule holds the layers of an eager model it returns, so
    # layers replaced in the GraphModule alone would stay deployed in that eager model.
    model = unlink(model)
    for name, module in list(model.named_modules()):
        source = compact_source(module)
        if source is None:
            continue
        layer = source.layer().train(model.training)
        if not name:
            # The model's own notes (its source, its recipe) stay with it.
            notes = {k: v for k, v in model.__dict__.items() if k.startswith("_modelzip_")}
            for k in (DEPLOYED_ATTR, LAYOUT_ATTR, SOURCE_ATTR):
                notes.pop(k, None)
            layer.__dict__.update(notes)
            model = layer
            break
        replace_module(model, name, layer)
    for p in model.parameters():
        p.requires_grad_(True)
    if model.__dict__.pop(LAYOUT_ATTR, None) == "channels_last":
        model.to(memory_format=torch.contiguous_format)
    model.__dict__.pop(DEPLOYED_ATTR, None)
    return model


def _has_conv(model: nn.Module) -> bool:
    """Whether ``model`` holds 4-D weights (parameters, or int8 codes kept as buffers)."""
    return any(t.dim() == 4 for t in (*model.parameters(), *model.buffers()))


def _channels_last(model: nn.Module) -> nn.Module:
    model.to(memory_format=torch.channels_last)
    model.__dict__[LAYOUT_ATTR] = "channels_last"
    return model


def _choose_layout(
    model: nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...] | None,
    ref: Any,
    layout: str,
    reps: int,
    report: MaterializeReport,
) -> nn.Module:
    """Convert ``model`` to channels-last when asked, or when measured faster and equal."""
    if not _has_conv(model):
        report.layout_reason = "no 4-D weights"
        return model
    if layout == "contiguous":
        report.layout_reason = "asked for"
        return model
    if layout == "measured" and (not isinstance(sample, torch.Tensor) or ref is None):
        report.layout_reason = "no sample to measure on"
        return model
    if layout == "channels_last":
        report.layout, report.layout_reason = "channels_last", "asked for"
        return _channels_last(model)
    candidate = _channels_last(copy.deepcopy(model))
    try:
        with torch.no_grad():
            err = _rel_error(candidate(sample), ref)
    except (RuntimeError, ValueError) as e:
        report.layout_reason = f"channels-last failed: {e}"
        return model
    if err > TOLERANCE["float"]:
        report.layout_reason = f"channels-last disagrees (rel. error {err:.1e})"
        return model
    # Warm-up calls are left out: oneDNN builds its kernels for a new layout on the first call.
    t_nchw, t_nhwc = _time_interleaved([model, candidate], sample, max(reps, 5))
    if t_nhwc < t_nchw:
        report.layout = "channels_last"
        report.layout_reason = f"measured {t_nchw / t_nhwc:.2f}× faster than NCHW"
        return _channels_last(model)  # in place: the caller's object stays the model
    report.layout_reason = f"channels-last measured {t_nchw / t_nhwc:.2f}× the speed: kept NCHW"
    return model


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
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


def _choose(
    name: str, module: nn.Module, x: torch.Tensor | None, reps: int, choose: str
) -> tuple[nn.Module, LayerMaterialization, list[_Form]]:
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
                err = _rel_error(new(x), ref)
        except (RuntimeError, ValueError, TypeError) as e:
            entry.reason = f"{kind} failed: {e}"
            continue
        tol = TOLERANCE[kind.split(":")[0]]
        if err > tol:
            entry.reason = f"{kind} disagrees (rel. error {err:.1e} > {tol:.0e}): kept"
            continue
        built.append((kind, new))
        errors[id(new)] = err
    times = _time_interleaved([module] + [m for _, m in built], x, reps)
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
        _Form(kind, new, errors[id(new)], t_ref / t)
        for (kind, new), t in zip(built, times[1:], strict=True)
    ]
    return best, entry, forms


__all__ = [
    "LayerMaterialization",
    "MaterializeReport",
    "dense_anchor",
    "is_deployed",
    "materialize",
    "time_against",
    "trainable",
]
