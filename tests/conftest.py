"""Shared fixtures: the shipped data sets, loaded once per test session.

Data use the user's default cache (the MNIST arrays are cached there after the first load);
tests of the baseline cache point ``MODELZIP_CACHE`` at a temporary folder themselves.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a 2-core machine shared with other jobs, spinning OpenMP waits
# made training 17x slower with 2 threads than with 1 (see benchmarks/baselines.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from modelzip.data import Dataset, TextCorpus, load_dataset


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    data = load_dataset("mnist")
    assert isinstance(data, Dataset)
    return data


@pytest.fixture(scope="session")
def digits() -> Dataset:
    data = load_dataset("digits")
    assert isinstance(data, Dataset)
    return data


@pytest.fixture(scope="session")
def shakespeare() -> TextCorpus:
    data = load_dataset("shakespeare")
    assert isinstance(data, TextCorpus)
    return data
