"""Wall-clock timing done one way everywhere: interleaved, warm, medians with their range.

Speed in this project is a ratio against an anchor timed side by side in the same run. The
candidates are called in turns (``a, b, a, b, ...``) so that load from other processes slows all
of them alike; a first call (compilation, cold caches, lazy initialisation) is never one of the
samples but is reported apart as :attr:`Timing.cold`; a result is the median over the samples,
with the fastest and slowest sample as its range. :func:`measure_latency
<modelzip.measure.measure_latency>`, the latency search of :mod:`modelzip.joint.auto`,
``materialize()`` and the benchmarks all time through :func:`time_interleaved`.

The clock is a parameter so that tests drive it by hand instead of depending on real time.
Tensors on a GPU run asynchronously: when an input, a module's parameters or ``device`` are on
CUDA, every timed call is followed by ``torch.cuda.synchronize``; nothing assumes a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.allocator import keep_freed_buffers

Clock = Callable[[], float]
GradMode = Literal["no_grad", "inference", "enabled"]

#: ``number="auto"`` repeats a call until one sample lasts about this long, so that a fast call
#: is not timer resolution and noise.
AUTO_BLOCK_SECONDS = 0.05
#: ``number="auto"`` never repeats a call more than this many times per sample.
AUTO_MAX_NUMBER = 20


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call of one timed callable: its warm samples and its first call apart."""

    #: Seconds per call of each warm sample, in the order they were taken (one per round).
    values: tuple[float, ...]
    #: Seconds of the very first call (compilation, cold caches), never among ``values``;
    #: ``None`` when the caller warmed the callable up before.
    cold: float | None = None
    #: Median process-CPU seconds per call (when a CPU clock was given): steadier than wall time
    #: on a machine whose cores other jobs share.
    cpu: float | None = None

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a Timing needs at least one sample")

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def samples(self) -> int:
        return len(self.values)

    @property
    def ms(self) -> float:
        """The median in milliseconds."""
        return self.median * 1e3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (seconds): median, range, sample count and the cold call."""
        out = {"median_s": self.median, "min_s": self.min, "max_s": self.max,
               "samples": self.samples, "cold_s": self.cold}  # fmt: skip
        if self.cpu is not None:
            out["cpu_s"] = self.cpu
        return out


def ratio(anchor: Timing, other: Timing) -> float:
    """How many times faster ``other`` is than ``anchor`` (ratio of medians; > 1: faster)."""
    return anchor.median / other.median


def ratio_range(anchor: Timing, other: Timing) -> tuple[float, float]:
    """Lowest and highest per-round ratio ``anchor / other`` of two interleaved timings.

    Round ``i`` of both was taken back to back, so each pair saw the same machine load.
    """
    if anchor.samples != other.samples:
        raise ValueError("ratio_range needs two timings of the same interleaved run")
    pairs = [a / b for a, b in zip(anchor.values, other.values, strict=True)]
    return min(pairs), max(pairs)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _tensors(item)
    elif isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()


def synchronizer(*where: Any, device: torch.device | str | None = None) -> Callable[[], None]:
    """A function that waits for queued GPU work when ``device`` or a tensor in ``where`` (inputs,
    modules) is on CUDA, else one that does nothing: timing stays correct on a GPU without
    assuming one."""
    devices = {torch.device(device)} if device is not None else set()
    for obj in where:
        devices |= {t.device for t in _tensors(obj)}
    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)
    if not cuda:
        return lambda: None

    def sync() -> None:
        for d in cuda:
            torch.cuda.synchronize(d)

    return sync


def _grad_context(grad: GradMode) -> contextlib.AbstractContextManager[Any]:
    if grad == "no_grad":
        return torch.no_grad()
    if grad == "inference":
        return torch.inference_mode()
    if grad == "enabled":
        return contextlib.nullcontext()
    raise ValueError(f"grad must be 'no_grad', 'inference' or 'enabled', not {grad!r}")


def _bind(targets: Sequence[Callable[..., Any]], inputs: Any) -> list[Callable[[], Any]]:
    if inputs is None:
        return list(targets)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    return [lambda f=f: f(*args) for f in targets]


def time_interleaved(
    targets: Sequence[Callable[..., Any]],
    inputs: Any = None,
    *,
    reps: int,
    warmup: int = 1,
    number: int | Literal["auto"] = 1,
    min_seconds: float = 0.0,
    max_reps: int | None = None,
    grad: GradMode = "no_grad",
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
    cpu_clock: Clock | None = None,
    shuffle: bool = False,
    settle: int = 0,
) -> list[Timing]:
    """One :class:`Timing` per target, the targets called in turns.

    ``targets`` are modules or callables, called as ``target(*inputs)`` (``inputs`` a tuple of
    arguments, or one argument) or, when ``inputs`` is None, with no argument. Each target is
    first called ``warmup`` times (at least once; the very first call is timed alone as
    :attr:`Timing.cold`, the others untimed except for ``number="auto"``), then ``reps`` rounds
    each time every target once, in the same order; a sample is the mean of ``number`` calls
    back to back. ``number="auto"`` picks per target the count that makes a sample last about
    :data:`AUTO_BLOCK_SECONDS` (from its last warm-up call). Rounds continue past ``reps`` until
    ``min_seconds`` have passed, but not past ``max_reps`` (default ``reps``, or ``10 * reps``
    with ``min_seconds``). The calls run under ``grad`` (``torch.no_grad()`` by default).
    With ``shuffle`` each round calls the targets in a new order (a fixed-seed shuffle, the
    same in every run), so that no target always runs right after the same neighbour, e.g. one
    that evicted its weights from the caches: with several large models a fixed order favoured
    some by up to 20%, and so did starting each round one target later, which keeps every
    target's predecessor.
    ``settle`` untimed calls precede each sample of a target: its weights are back in the
    caches, as when it runs alone in a loop (a model whose weights nearly fill the last-level
    cache was otherwise timed cold, after its neighbours had evicted them: an int8 MLP of 25 MB
    ran 1.6 ms per call that way and 0.97 ms alone, on a 32 MB L3).
    The first call in a process fixes glibc's malloc thresholds
    (:func:`modelzip.core.allocator.keep_freed_buffers`), so that no target pays page faults
    for buffers the C library would otherwise unmap at every call.
    """
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    if warmup < 1:
        raise ValueError("warmup must be at least 1: a first call is never a timed sample")
    if settle < 0:
        raise ValueError(f"settle must be at least 0, got {settle}")
    if number != "auto" and number < 1:
        raise ValueError(f"number must be at least 1 or 'auto', got {number!r}")
    limit = max_reps if max_reps is not None else (10 * reps if min_seconds > 0 else reps)
    keep_freed_buffers()
    calls = _bind(targets, inputs)
    sync = synchronizer(inputs, *(t for t in targets if isinstance(t, nn.Module)), device=device)
    cold: list[float] = []
    last: list[float] = [0.0] * len(calls)
    wall: list[list[float]] = [[] for _ in calls]
    cpu: list[list[float]] = [[] for _ in calls]
    with _grad_context(grad):
        for round_ in range(warmup):
            for i, call in enumerate(calls):
                t = clock()
                call()
                sync()
                last[i] = clock() - t
                if round_ == 0:
                    cold.append(last[i])
        counts = [_auto_number(s) if number == "auto" else number for s in last]
        start = clock()
        rounds = 0
        rng = random.Random(0)
        while rounds < limit and (rounds < reps or clock() - start < min_seconds):
            order = list(range(len(calls)))
            if shuffle:
                rng.shuffle(order)
            for i in order:
                call, n = calls[i], counts[i]
                for _ in range(settle):
                    call()
                sync()
                c = cpu_clock() if cpu_clock is not None else 0.0
                t = clock()
                for _ in range(n):
                    call()
                sync()
                wall[i].append((clock() - t) / n)
                if cpu_clock is not None:
                    cpu[i].append((cpu_clock() - c) / n)
            rounds += 1
    return [
        Timing(tuple(w), cold=cold[i], cpu=statistics.median(cpu[i]) if cpu[i] else None)
        for i, w in enumerate(wall)
    ]


def _auto_number(seconds: float) -> int:
    return int(min(AUTO_MAX_NUMBER, max(1, AUTO_BLOCK_SECONDS / max(seconds, 1e-6))))


def time_named(
    targets: Mapping[str, Callable[..., Any]], inputs: Any = None, **kwargs: Any
) -> dict[str, Timing]:
    """:func:`time_interleaved` over named targets, in the mapping's order; ``{name: Timing}``."""
    names = list(targets)
    timings = time_interleaved([targets[k] for k in names], inputs, **kwargs)
    return dict(zip(names, timings, strict=True))


def median_seconds(
    modules: Sequence[Callable[..., Any]], x: Any, reps: int, *, warmup: int = 1
) -> list[float]:
    """Median seconds of ``m(x)`` for each module under ``torch.no_grad()``, interleaved and
    warm: the drop-in for a list of per-module medians."""
    return [t.median for t in time_interleaved(modules, x, reps=reps, warmup=warmup)]
