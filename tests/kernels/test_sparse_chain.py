"""Sparse linears at a few rows: by columns with zero inputs skipped, and runs of them linked
into one call (:mod:`modelzip.kernels.sparse_chain`), equal to the layers one by one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.model_links import model_link
from modelzip.deploy import materialize, trainable
from modelzip.kernels.sparse_chain import SparseRun
from modelzip.kernels.sparse_layers import FEW_ROWS, SparseLinear
from modelzip.prune.masked import MaskedLinear


def _pruned(fan_in: int, fan_out: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(fan_in, fan_out, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.85] = 0
    return lin


class Normalized(nn.Module):
    """An MLP whose code normalizes its input, as the zoo's LeNet-300 does."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1, self.fc2 = _pruned(64, 32, 0, bias), _pruned(32, 16, 1)
        self.fc3 = _pruned(16, 4, 2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten((x - 0.25) / 0.5)
        return self.fc3(torch.relu(self.fc2(self.relu(self.fc1(x)))))


def _sparse(model: nn.Module) -> nn.Module:
    for name in ("fc1", "fc2", "fc3"):
        setattr(model, name, SparseLinear.from_dense(getattr(model, name), 1).eval())
    return model.eval()


def _input(rows: int) -> torch.Tensor:
    torch.manual_seed(3)
    x = torch.rand(rows, 1, 8, 8)
    return torch.where(x < 0.6, torch.zeros_like(x), x)  # zero background, as an image's


@pytest.mark.parametrize("rows", [1, 2, FEW_ROWS, FEW_ROWS + 3])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_few_rows_equals_dense(rows: int, bias: bool) -> None:
    lin = _pruned(40, 24, 5, bias)
    sparse = SparseLinear.from_dense(lin, 1).eval()
    x = torch.relu(torch.randn(rows, 40))
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), lin(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the cached columns follow an in-place edit of the values
        sparse.values.mul_(2)
        lin.weight.mul_(2)
        torch.testing.assert_close(sparse(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 9])
def test_linked_run_equals_the_layers(rows: int) -> None:
    model = _sparse(Normalized())
    x = _input(rows)
    with torch.no_grad():
        ref = model(x)
    chain, undo = model_link("sparse_chain")
    linked, links, why = chain(model)
    assert links == 3 and why == ""
    runs = [m for m in linked.modules() if isinstance(m, SparseRun)]
    assert len(runs) == 1 and runs[0].relu == (True, True, False) and runs[0].flatten
    assert runs[0].scale == pytest.approx(2.0) and runs[0].shift == pytest.approx(-0.5)
    with torch.inference_mode():
        torch.testing.assert_close(linked(x), ref, rtol=1e-5, atol=1e-5)
    with torch.enable_grad():  # the layer-by-layer path, for autograd and larger batches
        torch.testing.assert_close(linked(x), ref, rtol=1e-5, atol=1e-5)
    assert undo(linked) is model


def test_a_value_read_twice_ends_the_run() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = _pruned(16, 16, 0), _pruned(16, 16, 1), _pruned(16, 16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.c(torch.relu(self.b(h))) + h

    model = Branch()
    for n in "abc":
        setattr(model, n, SparseLinear.from_dense(getattr(model, n), 1).eval())
    x = torch.relu(torch.randn(1, 16))
    with torch.no_grad():
        ref = model(x)
    linked, links, _ = model_link("sparse_chain")[0](model.eval())
    assert links == 2  # b and c; a's output is read by b and by the add
    with torch.inference_mode():
        torch.testing.assert_close(linked(x), ref, rtol=1e-5, atol=1e-5)


def test_deploy_links_saves_and_reloads(tmp_path: object) -> None:
    from modelzip.models import create

    model = create("lenet300")
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(model, name)
        masked = MaskedLinear.from_dense(layer)
        with torch.no_grad():
            masked.set_mask(torch.rand_like(layer.weight) > 0.9)
        setattr(model, name, masked)
    x = _input(1).repeat(1, 1, 4, 4)[:, :, :28, :28]
    with torch.no_grad():
        ref = model(x)
    deployed, report = materialize(model, x, reps=1, choose="compressed")
    assert report.sparse_chain.startswith("3 sparse linears run as one call")
    assert {r.form for r in report.layers} == {"float:CSR"}
    with torch.inference_mode():
        torch.testing.assert_close(deployed(x), ref, rtol=1e-4, atol=1e-5)
    path = modelzip.save(deployed, tmp_path / "sparse.mzip")  # type: ignore[operator]
    loaded = modelzip.load(path)
    assert any(isinstance(m, SparseRun) for m in loaded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), deployed(x))
    back = trainable(deployed)
    assert isinstance(back.fc1, MaskedLinear) and not any(
        isinstance(m, SparseRun) for m in back.modules()
    )
