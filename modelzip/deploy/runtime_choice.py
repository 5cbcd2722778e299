"""The last whole-model choice: the deployment run whole by onnxruntime
(:mod:`modelzip.export.ort_link`, reached through the model link ``"onnxruntime"``), for a model
whose activations are int8, kept when measured faster on the sample than the PyTorch deployment
by more than :data:`MARGIN` and equal to it within the int8 tolerance, on the sample and on one
row of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.core.compact_source import ORT_ATTR
from modelzip.core.model_links import model_link
from modelzip.deploy import timing
from modelzip.deploy.model_choice import tolerance_of
from modelzip.deploy.report import TOLERANCE, MaterializeReport, rel_error

#: How a report's ``onnxruntime`` line (and the deploy note) starts when onnxruntime was kept.
ORT_KEPT = "onnxruntime runs the whole model"
#: How much faster onnxruntime must measure to be kept: moving the whole model to another
#: runtime for less is a coin flip. Three deploys of the same dynamic int8 MLP at batch 1 (2
#: threads, weights in the L3) measured onnxruntime 1.10× and 1.02× faster and 1.07× slower;
#: with the caches flushed before each call the PyTorch deployment ran 5% faster.
MARGIN = 0.03


def choose_runtime(
    model: nn.Module, sample: torch.Tensor, ref: Any, reps: int, report: MaterializeReport
) -> nn.Module:
    """``model`` (the PyTorch deployment) or the same layers run by onnxruntime, whichever is
    measured faster; ``report.onnxruntime`` says what was tried and why it was kept or not."""
    if tolerance_of(model) < TOLERANCE["int8"] or not isinstance(ref, torch.Tensor):
        return model  # no int8 activations: onnxruntime would only be another float runtime
    eager = model.__dict__.get("_modelzip_eager", model)
    eager.__dict__[ORT_ATTR] = {"input_shape": list(sample.shape[1:])}
    linked, links, why = model_link("onnxruntime")[0](model)
    kept = False
    if links:
        kept, why = _measure(model, linked, sample, ref, reps)
    report.onnxruntime = why
    report.note = f"{report.note}; {why}" if report.note else why
    if not kept:
        eager.__dict__.pop(ORT_ATTR, None)  # linked, then measured: the record goes too
        return model
    return linked


def _measure(
    model: nn.Module, linked: nn.Module, sample: torch.Tensor, ref: torch.Tensor, reps: int
) -> tuple[bool, str]:
    """Whether ``linked`` is kept, and what was measured."""
    tolerance = tolerance_of(model)
    try:
        with torch.no_grad():
            err = rel_error(linked(sample), ref)
            # One row too: a graph traced with a batch-dependent shape fails or differs there.
            err = max(err, rel_error(linked(sample[:1]), model(sample[:1])))
    except Exception as e:  # onnxruntime raises its own types
        failed = f"{type(e).__name__}: {str(e)[:120]}"
        return False, f"onnxruntime: failed ({failed}), stays in PyTorch"
    if err > tolerance:
        return False, f"onnxruntime: output disagrees (rel. error {err:.1e}), stays in PyTorch"
    times = timing.time_interleaved(
        [model, linked], sample, reps=2 * max(reps, 5), warmup=2, min_seconds=0.3,
        max_reps=20 * max(reps, 5), grad="inference", settle=timing.SETTLE,
    )  # fmt: skip
    t_torch, t_ort = (t.median for t in times)
    ms = f"{t_ort * 1e3:.2f} against {t_torch * 1e3:.2f} ms"
    if t_ort >= t_torch:
        return False, f"onnxruntime: measured slower than PyTorch ({ms}), stays in PyTorch"
    if t_ort > t_torch * (1 - MARGIN):
        return False, (
            f"onnxruntime: measured {t_torch / t_ort:.2f}× the PyTorch deployment ({ms}), "
            f"within the {MARGIN:.0%} margin of the measurement: stays in PyTorch"
        )
    speed = f"{t_torch / t_ort:.2f}× the PyTorch deployment"
    return True, f"{ORT_KEPT}: {speed} ({ms})"
