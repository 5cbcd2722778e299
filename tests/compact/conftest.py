"""One CPU thread for the compact family's tests (their many small ops, see ``one_thread``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one torch thread (see ``one_thread``)."""
