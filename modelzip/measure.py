"""Measured latency: warm up, then the median of repeated timed calls."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module, sample: Any, *, warmup: int = 3, repeats: int = 15, min_seconds: float = 0.2
) -> float:
    """Median wall time in milliseconds of ``model(sample)`` in eval and inference mode.

    Repeats at least ``repeats`` times and until ``min_seconds`` have passed, so fast models are
    timed over many calls. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = sample.device if isinstance(sample, torch.Tensor) else torch.device("cpu")
    args = sample if isinstance(sample, tuple) else (sample,)
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args)
            _sync(device)
            start = time.perf_counter()
            while len(times) < repeats or time.perf_counter() - start < min_seconds:
                t0 = time.perf_counter()
                model(*args)
                _sync(device)
                times.append(time.perf_counter() - t0)
                if len(times) >= 10 * repeats:
                    break
    finally:
        model.train(was_training)
    return statistics.median(times) * 1e3
