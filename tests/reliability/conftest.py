"""Hypothesis profiles and one-thread torch for the reliability tests.

``ci`` (the default, used by ``make test``) keeps each property to a few dozen examples;
``fuzz`` (``MODELZIP_HYPOTHESIS=fuzz``, used by ``make fuzz``) runs many more. The profile is
applied per test through :data:`weight_strategies.PROFILE` rather than loaded globally, so the
rest of the suite keeps its own settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import attack_log
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one torch thread (see ``one_thread``)."""


# --- the attack-class counts behind RELIABILITY.md's table (see attack_log.py) ---------------


def pytest_configure(config):
    config.addinivalue_line("markers", "attack(name): the attack class a reliability test tries")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    attack_log.start_test()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("attack")
    if marker is not None and report.when == "call":
        attack_log.end_test(marker.args[0], Path(item.fspath).name, report.failed)


def pytest_sessionfinish(session, exitstatus):
    attack_log.write(os.environ.get("MODELZIP_HYPOTHESIS", "ci"))
