"""Deploy's one clock: every time :mod:`modelzip.deploy` measures goes through this module.

The other modules call ``timing.time_medians`` and ``timing.time_interleaved`` through the
module, looked up at call time, so that a test faking deploy's clock patches this one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.core.timing import Timing, time_interleaved

#: Untimed calls of a candidate right before each of its timed ones, in every comparison deploy
#: makes (:func:`time_against`'s docstring says why): what ``materialize`` chooses is measured
#: as ``modelzip eval`` measures it.
SETTLE = 1


def time_medians(modules: list[nn.Module], x: torch.Tensor, reps: int) -> list[float]:
    """Median seconds of ``m(x)`` for each module, interleaved and warm (the first call of each
    is timed apart and left out), so that a busy machine slows all candidates alike; each warm
    (:data:`SETTLE`)."""
    return [t.median for t in time_interleaved(modules, x, reps=reps, warmup=2, settle=SETTLE)]


def time_against(
    reference: nn.Module, model: nn.Module, sample: Any, *, repeats: int = 15
) -> tuple[Timing, Timing]:
    """``reference`` (the dense original) and ``model`` timed side by side on ``sample``:
    interleaved rounds, three warm-up calls each (the first timed apart as the cold call), then
    at least ``repeats`` rounds and 0.3 s, in eval and inference mode (modes restored).

    Each timed call follows one untimed call of the same model (:data:`SETTLE`): a model is timed
    warm, as it runs in a serving loop, not right after the other model evicted its weights and
    buffers from the caches. Without it, on a 1 MB L2, the int8 LeNet-5 ran 1.96 ms per call
    after each dense call and 1.80 ms warm (dense 4.98 and 4.89 ms): the interleaving, which is
    there so that a busy machine slows both alike, had become part of the figure."""
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
            settle=SETTLE,
        )
    finally:
        for m, mode in modes:
            m.train(mode)
    return timings[0], timings[1]
