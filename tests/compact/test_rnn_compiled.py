"""The compiled sequence runner (``torch.compile`` of the step) computes what the eager one does."""

import shutil

import pytest
import torch

from modelzip.compact.rnn_networks import StackedRNN


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")  # fmt: skip
@pytest.mark.parametrize("cell", ["mgu", "janet"])
def test_compiled_runner_matches_eager(cell):
    torch.manual_seed(0)
    eager = StackedRNN(cell, 5, 7, num_layers=2)
    compiled = StackedRNN(cell, 5, 7, num_layers=2, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
