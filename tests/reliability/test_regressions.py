"""The failing examples the reliability tests found, kept as explicit regression tests (see the
"Bugs found and fixed" table of RELIABILITY.md)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import modelzip
from modelzip.core.errors import DataError, ModelError
from modelzip.data.npz import load_npz
from modelzip.decompose.configs import CPConfig
from modelzip.decompose.cp import CPConv2d
from modelzip.prune.methods import ThresholdPruneConfig
from modelzip.prune.rnn import HiddenPruneConfig
from modelzip.quantize.inq import INQConfig
from modelzip.quantize.quantizer import QuantizerConfig, quantize_tensor
from modelzip.quantize.schemes import multibit_bases
from modelzip.quantize.weights import QuantizeWeightsConfig


@pytest.mark.parametrize("levels", ["uniform-symmetric", "uniform-affine"])
def test_denormal_range_quantizes(levels):
    # The step of a range of 1.4e-45 underflowed to 0 and the codes became 0/0.
    w = torch.tensor([[1.4e-45, -1.4e-45, 0.0, 1.4e-45]])
    q = quantize_tensor(w, QuantizerConfig(bits=4, levels=levels))
    assert q.codes.min() >= 0 and q.codes.max() < 16
    # A range below float32's resolution cannot be split: the error stays within the range.
    assert (q.dequantize() - w).abs().max() <= 2.8e-45


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_quantizers_skip_or_refuse_other_dtypes(dtype):
    # Quantized layers compute in float32: the model used to crash at its next forward pass.
    model = nn.Sequential(nn.Linear(8, 4)).to(dtype)
    x = torch.randn(2, 8, dtype=dtype)
    small, report = modelzip.compress(model, QuantizeWeightsConfig(bits=4), sample=x)
    assert not report.layers and str(dtype) in report.skipped[0].reason
    assert small(x).dtype == dtype
    with pytest.raises(ModelError, match=str(dtype)):
        modelzip.compress(model, INQConfig(), sample=x)


def test_multibit_constant_row():
    # Equal sign columns made the Gram matrix singular in float32 (torch.linalg.solve raised).
    codes, levels, _ = multibit_bases(torch.full((2, 8), 0.5), 3, per_channel=True)
    values = torch.gather(levels, 1, codes)
    torch.testing.assert_close(values, torch.full((2, 8), 0.5))


@pytest.mark.parametrize("fill", [0.0, -3.0])
def test_cp_of_zero_and_constant_kernels(fill):
    # Zero kernels crashed CP-ALS (singular solve); a constant one gave factors of 3e19 and
    # 5e-35 whose separable convolution overflowed float32.
    conv = nn.Conv2d(6, 8, 3, bias=False)
    with torch.no_grad():
        conv.weight.fill_(fill)
    layer = CPConv2d.from_dense(conv, CPConfig())
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-4)
    assert max(p.abs().max() for p in layer.parameters()) < 100


class _Lm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 1, batch_first=True)
        self.head = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def test_hidden_prune_keeps_one_unit():
    # round(0.75 * 1) = 1 unit removed: torch refused an LSTM of hidden size 0.
    model, x = _Lm().eval(), torch.randn(2, 5, 4)
    small, _ = modelzip.compress(model, HiddenPruneConfig(sparsity=0.75), sample=x)
    assert small(x).shape == model(x).shape


def test_threshold_prune_single_weight():
    # The sample std of one weight is NaN, and |w| > NaN pruned it whatever its size.
    model = nn.Sequential(nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    small, _ = modelzip.compress(
        model, ThresholdPruneConfig(quality=1.0), sample=torch.ones(1, 1), deploy=False
    )
    assert bool(small[0].mask.all())


def test_npz_with_corrupt_deflate_stream(tmp_path):
    # zlib.error escaped from deep in zipfile.
    buffer = io.BytesIO()
    x = np.zeros((16, 4, 4), np.float32)
    np.savez_compressed(
        buffer, x_train=x, y_train=np.zeros(16, int), x_test=x, y_test=np.zeros(16, int)
    )
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        offset = z.getinfo("x_train.npy").header_offset
    # The local header's own name and extra-field lengths locate the deflate stream.
    name_len = int.from_bytes(data[offset + 26 : offset + 28], "little")
    extra_len = int.from_bytes(data[offset + 28 : offset + 30], "little")
    start = offset + 30 + name_len + extra_len
    data[start : start + 8] = b"\xff" * 8  # an invalid block type
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"not a readable \.npz archive.*(Error|invalid)"):
        load_npz(path)


def test_cli_train_is_reproducible_whatever_the_global_seed(tmp_path):
    # The initial weights came from torch's per-process random seed.
    from modelzip.cli import main

    states = []
    for i in range(2):
        torch.manual_seed(100 + i)
        out = tmp_path / f"{i}.mzip"
        assert main(["train", "lenet300", "--dataset", "digits", "--epochs", "1", "--out",
                     str(out), "--quiet"]) == 0  # fmt: skip
        states.append(modelzip.load(out).state_dict())
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
