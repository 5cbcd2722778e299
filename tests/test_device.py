"""Device-agnostic compression: a model on CUDA compresses, runs, trains and saves on CUDA.

These run only where a GPU is present (CI has none; the project's GPU checks run them on a lent
machine, see "Device checks" in BENCHMARKS.md); everything they exercise also runs on the CPU in
the other test files.
"""

from __future__ import annotations

import pytest
import torch

import modelzip
from modelzip.core.registry import get_method, list_methods
from modelzip.models import create

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method", list_methods())
def test_compress_on_cuda_stays_on_cuda(method, tmp_path, model_for_method):
    model, x = model_for_method(method)
    example = get_method(method).example
    cpu_small, _ = modelzip.compress(model, example, sample=x, measure=False)
    gpu_model = model.to("cuda")
    small, report = modelzip.compress(gpu_model, example, sample=x.to("cuda"), measure=True)
    assert report.layers
    assert all(t.device.type == "cuda" for t in [*small.parameters(), *small.buffers()])
    with torch.inference_mode():
        out = small(x.to("cuda"))
        ref = cpu_small(x)
    assert out.device.type == "cuda"
    assert (out.cpu() - ref).abs().max() <= 1e-3 + 0.05 * ref.abs().max()
    loaded = modelzip.load(modelzip.save(small, tmp_path / "m.mzip"), map_location="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x.to("cuda")), out, rtol=1e-5, atol=1e-5)


def test_finetune_on_cuda_keeps_masks():
    from modelzip.data import load_dataset
    from modelzip.train import TrainConfig

    data = load_dataset("digits")
    model = create("lenet300", input_shape=[1, 8, 8]).to("cuda")
    cfg = TrainConfig(epochs=1, lr=1e-3, optimizer="adam", val_size=0.1)
    small, report = modelzip.compress(
        model, modelzip.MagnitudePruneConfig(sparsity=0.9), data, finetune=cfg
    )
    assert report.after.accuracy is not None
    assert small.fc1.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert small.fc1.weight.device.type == "cuda"
