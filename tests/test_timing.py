"""The one timing helper: interleaving, warm-up apart, medians and ranges, on a fake clock.

The clock is injected, so these tests never depend on how fast the machine is.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.core.timing import (
    Timing,
    median_seconds,
    ratio,
    ratio_range,
    synchronizer,
    time_interleaved,
    time_named,
)
from modelzip.measure import measure_latency


class FakeClock:
    """A clock that only moves when a fake call says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scripted(clock: FakeClock, name: str, durations: list[float], log: list[str]):
    """A callable that logs its name and advances ``clock`` by its next scripted duration."""
    it = iter(durations)

    def call(*args) -> None:
        log.append(name)
        clock.now += next(it)

    return call


def test_calls_alternate_and_warmups_come_first():
    clock, log = FakeClock(), []
    a = scripted(clock, "a", [1.0] * 10, log)
    b = scripted(clock, "b", [1.0] * 10, log)
    time_interleaved([a, b], reps=3, warmup=2, clock=clock)
    assert log == ["a", "b"] * 5  # 2 warm-up rounds, then 3 timed rounds, always in turns


def test_shuffled_rounds_give_every_target_every_predecessor():
    """Each round is a permutation of the targets, the same in every run, and over the rounds
    each target runs right after each other one (a rotation of one order would not: every
    target would keep its predecessor)."""
    logs = []
    for _ in range(2):
        clock, log = FakeClock(), []
        targets = [scripted(clock, n, [1.0] * 40, log) for n in "abcd"]
        timings = time_interleaved(targets, reps=30, warmup=1, clock=clock, shuffle=True)
        assert all(t.samples == 30 for t in timings)
        logs.append("".join(log))
    assert logs[0] == logs[1]  # a fixed seed
    rounds = [logs[0][i : i + 4] for i in range(4, len(logs[0]), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    pairs = {(r[i], r[i + 1]) for r in rounds for i in range(3)}
    assert pairs == {(p, q) for p in "abcd" for q in "abcd" if p != q}


def test_settle_calls_precede_each_sample_untimed():
    """With ``settle`` a target runs that many untimed calls right before each of its samples
    (its weights back in the caches); only the call after them is a sample."""
    clock, log = FakeClock(), []
    # a: warm-up 9, then per round one settle call (50 s, untimed) and one timed call
    a = scripted(clock, "a", [9.0, 50.0, 1.0, 50.0, 3.0], log)
    b = scripted(clock, "b", [5.0, 60.0, 4.0, 60.0, 6.0], log)
    ta, tb = time_interleaved([a, b], reps=2, warmup=1, clock=clock, settle=1)
    assert "".join(log) == "ab" + "aabb" + "aabb"
    assert ta.values == (1.0, 3.0) and tb.values == (4.0, 6.0)
    with pytest.raises(ValueError, match="settle"):
        time_interleaved([a], reps=1, settle=-1)


def test_cold_call_is_reported_apart_and_warmups_are_not_samples():
    clock, log = FakeClock(), []
    # a: cold 9 s, one more warm-up of 7 s, then samples 1, 3, 2
    a = scripted(clock, "a", [9.0, 7.0, 1.0, 3.0, 2.0], log)
    b = scripted(clock, "b", [5.0, 6.0, 4.0, 4.0, 8.0], log)
    ta, tb = time_interleaved([a, b], reps=3, warmup=2, clock=clock)
    assert ta.values == (1.0, 3.0, 2.0)
    assert ta.cold == 9.0
    assert (ta.median, ta.min, ta.max, ta.samples) == (2.0, 1.0, 3.0, 3)
    assert tb.values == (4.0, 4.0, 8.0)
    assert tb.cold == 5.0
    assert (tb.median, tb.min, tb.max) == (4.0, 4.0, 8.0)
    assert ratio(tb, ta) == 2.0
    assert ratio_range(tb, ta) == (4.0 / 3.0, 4.0)


def test_a_sample_is_the_mean_of_number_calls():
    clock, log = FakeClock(), []
    a = scripted(clock, "a", [5.0, 1.0, 3.0, 2.0, 2.0], log)
    (t,) = time_interleaved([a], reps=2, warmup=1, number=2, clock=clock)
    assert t.values == (2.0, 2.0)
    assert t.cold == 5.0
    assert len(log) == 5


def test_auto_number_fills_a_block_from_the_last_warm_call():
    clock, log = FakeClock(), []
    # cold 1 s, warm 0.015 s -> 3 calls (0.045 s) make a sample of about 0.05 s
    a = scripted(clock, "a", [1.0, 0.015] + [0.015] * 10, log)
    (t,) = time_interleaved([a], reps=2, warmup=2, number="auto", clock=clock)
    assert len(log) == 2 + 2 * 3
    assert t.median == pytest.approx(0.015)


def test_min_seconds_adds_rounds_up_to_max_reps():
    clock, log = FakeClock(), []
    a = scripted(clock, "a", [0.5] * 100, log)
    (t,) = time_interleaved([a], reps=2, warmup=1, min_seconds=3.0, clock=clock)
    assert t.samples == 6  # 6 x 0.5 s reaches 3 s
    (t,) = time_interleaved([a], reps=2, warmup=1, min_seconds=100.0, max_reps=4, clock=clock)
    assert t.samples == 4


def test_cpu_clock_gives_a_median_cpu_time():
    clock, cpu, log = FakeClock(), FakeClock(), []

    def a() -> None:
        log.append("a")
        clock.now += 1.0
        cpu.now += 0.25

    (t,) = time_interleaved([a], reps=3, clock=clock, cpu_clock=cpu)
    assert t.cpu == 0.25
    assert t.median == 1.0


def test_named_targets_keep_their_names_and_inputs_are_passed():
    clock, seen = FakeClock(), []

    def f(x, y):
        seen.append((x, y))
        clock.now += 1.0

    out = time_named({"first": f, "second": f}, (1, 2), reps=2, clock=clock)
    assert list(out) == ["first", "second"]
    assert set(seen) == {(1, 2)}


def test_modules_run_without_grad_by_default():
    grads = []

    class Probe(nn.Module):
        def forward(self, x):
            grads.append(torch.is_grad_enabled())
            return x

    time_interleaved([Probe()], torch.ones(2), reps=2)
    assert grads and not any(grads)
    grads.clear()
    time_interleaved([Probe()], torch.ones(2), reps=2, grad="enabled")
    assert all(grads)


def test_median_seconds_is_a_list_of_medians_per_module():
    out = median_seconds([nn.Identity(), nn.ReLU()], torch.ones(3), 3)
    assert len(out) == 2 and all(s >= 0 for s in out)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="warmup"):
        time_interleaved([lambda: None], reps=1, warmup=0)
    with pytest.raises(ValueError, match="reps"):
        time_interleaved([lambda: None], reps=0)
    with pytest.raises(ValueError, match="at least one sample"):
        Timing(())


def test_no_synchronisation_for_cpu_tensors(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(a))
    synchronizer(torch.ones(2), nn.Linear(2, 2))()
    assert calls == []
    synchronizer(device="cuda:0")()
    assert calls == [(torch.device("cuda:0"),)]


def test_measure_latency_keeps_its_meaning_and_restores_train_mode():
    model = nn.Linear(4, 4).train()
    ms = measure_latency(model, torch.ones(2, 4), repeats=3, min_seconds=0.0)
    assert ms > 0
    assert model.training
