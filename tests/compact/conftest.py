"""One CPU thread for the compact family's tests: their many small ops run far slower when two
threads contend with other processes for the cores (OpenMP waits), and results do not change."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
