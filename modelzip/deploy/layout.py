"""Memory layout: a model with 4-D weights in NCHW or channels-last, whichever is measured faster
on the sample and agrees with it (oneDNN's NHWC kernels are often faster at small channel counts).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from modelzip.core.compact_source import LAYOUT_ATTR
from modelzip.deploy import timing
from modelzip.deploy.report import TOLERANCE, MaterializeReport, rel_error


def has_conv(model: nn.Module) -> bool:
    """Whether ``model`` holds 4-D weights (parameters, or int8 codes kept as buffers)."""
    return any(t.dim() == 4 for t in (*model.parameters(), *model.buffers()))


def to_channels_last(model: nn.Module) -> nn.Module:
    model.to(memory_format=torch.channels_last)
    # A linked model (a GraphModule over its eager model) and the eager model it runs both carry
    # the note: a file is written from the eager one, and must load in this layout.
    for m in (model, model.__dict__.get("_modelzip_eager")):
        if m is not None:
            m.__dict__[LAYOUT_ATTR] = "channels_last"
    return model


def choose_layout(
    model: nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...] | None,
    ref: Any,
    layout: str,
    reps: int,
    report: MaterializeReport,
) -> nn.Module:
    """Convert ``model`` to channels-last when asked, or when measured faster and equal."""
    if not has_conv(model):
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
        return to_channels_last(model)
    candidate = to_channels_last(copy.deepcopy(model))
    try:
        with torch.no_grad():
            err = rel_error(candidate(sample), ref)
    except (RuntimeError, ValueError) as e:
        report.layout_reason = f"channels-last failed: {e}"
        return model
    if err > TOLERANCE["float"]:
        report.layout_reason = f"channels-last disagrees (rel. error {err:.1e})"
        return model
    # Warm-up calls are left out: oneDNN builds its kernels for a new layout on the first call.
    t_nchw, t_nhwc = timing.time_medians([model, candidate], sample, max(reps, 5))
    if t_nhwc < t_nchw:
        report.layout = "channels_last"
        report.layout_reason = f"measured {t_nchw / t_nhwc:.2f}× faster than NCHW"
        return to_channels_last(model)  # in place: the caller's object stays the model
    report.layout_reason = f"channels-last measured {t_nchw / t_nhwc:.2f}× the speed: kept NCHW"
    return model


def dense_anchor(model: nn.Module, sample: Any) -> nn.Module:
    """The dense original as the speed anchor: in its own fastest memory layout on this CPU
    (measured as :func:`~modelzip.deploy.materialize` measures a deployed model's), so that a
    speedup is what the compression buys, not channels-last. A copy when the layout changes;
    else ``model``."""
    if not has_conv(model) or not isinstance(sample, torch.Tensor):
        return model
    work = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = work(sample)
    chosen = choose_layout(work, sample, ref, "measured", 5, MaterializeReport([]))
    return chosen if chosen.__dict__.get(LAYOUT_ATTR) == "channels_last" else model
