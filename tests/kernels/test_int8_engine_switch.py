"""Prepacking a conv for another quantized engine switches a process-wide setting: threads that
prepack at once leave it as it was, and each packed weight holds the same codes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from modelzip.kernels.int8 import onednn_available, prepack_conv2d


@pytest.mark.skipif(not onednn_available(), reason="no oneDNN quantized engine")
def test_concurrent_prepacks_restore_the_engine() -> None:
    torch.manual_seed(0)
    codes = torch.randint(-127, 128, (8, 4, 3, 3), dtype=torch.int8)
    scale = torch.rand(8) + 0.01
    before = torch.backends.quantized.engine

    def pack(i: int) -> torch.Tensor:
        engine = "onednn" if i % 2 else None
        packed = prepack_conv2d(codes, scale, None, (1, 1), (1, 1), (1, 1), 1, engine)
        w, _ = torch.ops.quantized.conv2d_unpack(packed)
        return w.int_repr()

    with ThreadPoolExecutor(max_workers=8) as pool:
        weights = list(pool.map(pack, range(64)))
    assert torch.backends.quantized.engine == before
    assert all(torch.equal(w, codes) for w in weights)
