"""Measured latency: warm up, then the median of repeated timed calls.

Timed by :func:`modelzip.core.timing.time_interleaved`, as every speed measurement is.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modelzip.core.running import eval_inference
from modelzip.core.timing import Timing, time_interleaved


def latency_timing(
    model: nn.Module, sample: Any, *, warmup: int = 3, repeats: int = 15, min_seconds: float = 0.2
) -> Timing:
    """The :class:`~modelzip.core.timing.Timing` of ``model(sample)`` in eval and inference mode
    (``sample`` is one input or a tuple of inputs).

    Repeats at least ``repeats`` times and until ``min_seconds`` have passed (at most
    ``10 * repeats`` times), so fast models are timed over many calls; the first of the
    ``warmup`` calls (at least one) is timed apart as the cold call. The model's train/eval mode
    is restored afterwards.
    """
    with eval_inference(model):
        (timing,) = time_interleaved(
            [model],
            sample,
            reps=repeats,
            warmup=max(warmup, 1),
            min_seconds=min_seconds,
            max_reps=10 * repeats,
            grad="inference",
        )
    return timing


def measure_latency(
    model: nn.Module, sample: Any, *, warmup: int = 3, repeats: int = 15, min_seconds: float = 0.2
) -> float:
    """Median wall time in milliseconds of ``model(sample)`` in eval and inference mode.

    Repeats at least ``repeats`` times and until ``min_seconds`` have passed, so fast models are
    timed over many calls. The model's train/eval mode is restored afterwards.
    """
    timing = latency_timing(model, sample, warmup=warmup, repeats=repeats, min_seconds=min_seconds)
    return timing.ms
