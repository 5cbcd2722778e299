"""Links between layers that no layer alone can show pay: static int8 layers handing each other
uint8 (:mod:`modelzip.quantize.int8_chain`), runs of pruned linears in CSR run as one call
(:mod:`modelzip.kernels.sparse_chain`), XNOR convolutions reading the pooling before them
(:mod:`modelzip.kernels.xnor_inputs`) and dynamic int8 linears with their ReLUs run as one call
(:mod:`modelzip.kernels.int8_dynamic_runs`), each kept only if the whole model's output agrees.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from modelzip.core.compact_source import INT8_RUNS_ATTR, remember_source
from modelzip.core.context import replace_module
from modelzip.core.forms import candidates, declared_forms
from modelzip.core.model_links import model_link
from modelzip.deploy import timing
from modelzip.deploy.layer_choice import Pick
from modelzip.deploy.report import TOLERANCE, MaterializeReport, rel_error


def _disagreement(
    linked: nn.Module, args: tuple[Any, ...] | None, ref: Any, tolerance: float
) -> str:
    """Why ``linked`` cannot be kept: it fails on the sample, or its output is off ``ref`` by
    more than ``tolerance``; empty when it agrees (or there is no sample to check on)."""
    if args is None or ref is None:
        return ""
    try:
        with torch.no_grad():
            err = rel_error(linked(*args), ref)
    except (RuntimeError, ValueError, TypeError) as e:
        return f"{type(e).__name__}: {str(e)[:120]}"
    return f"output disagrees (rel. error {err:.1e})" if err > tolerance else ""


def link_int8_chain(
    model: nn.Module, args: tuple[Any, ...] | None, ref: Any, report: MaterializeReport
) -> nn.Module:
    """Link static int8 layers (uint8 between them, residual adds in int8), kept if the model's
    output on the sample still agrees within the int8 tolerance."""
    chain_static_int8, unchain = model_link("int8_chain")
    chained, links, why = chain_static_int8(model)
    if not links:
        report.int8_chain = "" if why.startswith("fewer") else why
        return model
    why_not = _disagreement(chained, args, ref, TOLERANCE["int8"])
    if why_not:
        report.int8_chain = f"unchained: {why_not}"
        return unchain(chained)
    report.int8_links = links
    report.int8_chain = f"{links} static int8 layers and adds pass uint8 on"
    return chained


def link_xnor_inputs(
    model: nn.Module, args: tuple[Any, ...] | None, ref: Any, report: MaterializeReport
) -> nn.Module:
    """XNOR convolutions that read the 2×2 max pool and hardtanh before them in their packing
    pass (:mod:`modelzip.kernels.xnor_inputs`): the same bits, so kept wherever the model's
    output on the sample agrees (it differs by the summation order of XNOR-Net's K alone)."""
    link, undo = model_link("xnor_inputs")
    linked, links, _ = link(model)
    if not links:
        return model
    what = f"{links} XNOR convolution{'s' if links > 1 else ''} read the pool/hardtanh before"
    why_not = _disagreement(linked, args, ref, TOLERANCE["float"])
    if why_not:
        report.xnor_inputs = f"unlinked: {why_not}"
        return undo(linked)
    report.xnor_inputs = what + " them"
    report.note = "; ".join(filter(None, [report.note, f"XNOR inputs: {report.xnor_inputs}"]))
    return linked


def link_int8_runs(
    model: nn.Module, args: tuple[Any, ...] | None, ref: Any, report: MaterializeReport
) -> nn.Module:
    """Native dynamic int8 linears linked (:mod:`modelzip.kernels.int8_dynamic_runs`): the ReLUs
    after them in the kernel's output, runs of them as one call. The same numbers, so kept
    wherever the model's output on the sample agrees with the unlinked model's (``ref``, the
    compressed model's, differs from both by the engines' input rounding)."""
    link, undo = model_link("int8_runs")
    linked, links, _ = link(model)
    if not links:
        return model
    if args is not None:
        with torch.no_grad():
            ref = model(*args)
    why_not = _disagreement(linked, args, ref, TOLERANCE["float"])
    if why_not:
        report.int8_runs = f"unlinked: {why_not}"
        return undo(linked)
    report.int8_runs = str(linked.__dict__.get(INT8_RUNS_ATTR, ""))
    report.note = "; ".join(filter(None, [report.note, f"int8 linears: {report.int8_runs}"]))
    return linked


def link_sparse_runs(
    model: nn.Module,
    picks: list[Pick],
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
        err = rel_error(linked(*args), ref)
    if err > TOLERANCE["float"]:
        return model
    timings = timing.time_interleaved([model, linked], args, reps=reps, warmup=3, number="auto")
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
