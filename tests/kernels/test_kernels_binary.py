"""Bit packing and the binary kernels against float64 references, on odd sizes (exact)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelzip.core.geometry import ConvGeometry
from modelzip.kernels.binary import (
    binary_conv2d,
    bwn_gemm,
    pack_conv_rows,
    padding_correction,
    sign_im2col,
    xnor_gemm,
)
from modelzip.kernels.bitpack import pack_bits, pack_signs, unpack_bits, unpack_signs, words_for
from modelzip.kernels.layers import xnor_input_scale

SIZES = [(1, 1, 1), (7, 13, 63), (33, 17, 65), (5, 9, 200), (3, 6, 129)]


def signs(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, -1.0, 1.0)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
def test_pack_roundtrip(k: int) -> None:
    rng = np.random.default_rng(k)
    bits = rng.random((3, k)) < 0.5
    words = pack_bits(bits)
    assert words.shape == (3, words_for(k)) and words.dtype == np.uint64
    np.testing.assert_array_equal(unpack_bits(words, k), bits)
    x = rng.standard_normal((4, k))
    np.testing.assert_array_equal(unpack_signs(pack_signs(x), k), signs(x))


def test_padding_bits_are_zero() -> None:
    words = pack_bits(np.ones((1, 65), dtype=bool))
    assert int(words[0, 0]) == 2**64 - 1 and int(words[0, 1]) == 1


@pytest.mark.parametrize(("m", "n", "k"), SIZES)
def test_xnor_gemm_exact(m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * n * k)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    c = xnor_gemm(pack_signs(a), pack_signs(b), k)
    np.testing.assert_array_equal(c, signs(a) @ signs(b).T)


@pytest.mark.parametrize(("m", "n", "k"), SIZES)
def test_bwn_gemm(m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m + n + k)
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k))
    y = bwn_gemm(x, pack_signs(w), k)
    np.testing.assert_allclose(y, x.astype(np.float64) @ signs(w).T, rtol=1e-5, atol=1e-4)


GEOMETRIES = [((1, 1), (0, 0), (1, 1)), ((2, 1), (1, 2), (1, 2))]


@pytest.mark.parametrize("channels", [70, 20, 64, 1])
@pytest.mark.parametrize(("stride", "padding", "dilation"), GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_binary_conv2d_exact(
    stride: tuple, padding: tuple, dilation: tuple, channels: int, channels_last: bool
) -> None:
    # 70 and 20 channels: taps straddle word boundaries in the bit stream; 64: whole words.
    g = torch.Generator().manual_seed(channels)
    x, w = torch.randn(2, channels, 11, 9, generator=g), torch.randn(7, channels, 3, 3, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ws = torch.where(w < 0, -1.0, 1.0)
    ref = F.conv2d(torch.where(x < 0, -1.0, 1.0).double(), ws.double(), None, stride, padding,
                   dilation)  # fmt: skip
    corr = padding_correction(ws, (11, 9), stride, padding, dilation) if any(padding) else None
    y = binary_conv2d(x, pack_conv_rows(ws), (7, channels, 3, 3), stride, padding, dilation,
                      corr)  # fmt: skip
    assert torch.equal(y.double(), ref)


@pytest.mark.parametrize(("stride", "padding", "dilation"), GEOMETRIES)
def test_sign_im2col_k_map(stride: tuple, padding: tuple, dilation: tuple) -> None:
    """The K map computed in the fused pass is XNOR-Net's K (:func:`xnor_input_scale`)."""
    x = torch.randn(3, 20, 10, 8, generator=torch.Generator().manual_seed(1))
    conv = torch.nn.Conv2d(20, 4, (3, 2), stride, padding, dilation)
    cols, k = sign_im2col(x, (3, 2), stride, padding, dilation, k_map=True)
    ref = xnor_input_scale(x, ConvGeometry.of(conv))  # (B, 1, OH, OW)
    assert k is not None and cols.shape == (ref.numel(), words_for(20 * 6))
    np.testing.assert_allclose(k, ref.reshape(-1).numpy(), rtol=1e-6)
    ones = torch.ones(1, 20, 10, 8)
    _, k1 = sign_im2col(ones, (3, 2), (1, 1), (0, 0), (1, 1), k_map=True)
    assert k1 is not None and (k1 == 1.0).all()  # K of a ±1 input is exactly 1


def test_mismatched_words_refused() -> None:
    with pytest.raises(ValueError, match="word counts"):
        xnor_gemm(np.zeros((2, 1), np.uint64), np.zeros((2, 2), np.uint64), 65)


def test_portable_path_without_vpopcntdq(tmp_path: object) -> None:
    """The same kernel compiled for a baseline x86-64 (no AVX-512, no popcnt instruction) is
    exact too: LLVM lowers ctpop to bit tricks."""
    code = (
        "import numpy as np;from modelzip.kernels.binary import xnor_gemm;"
        "from modelzip.kernels.bitpack import pack_signs;r=np.random.default_rng(1);"
        "a=r.standard_normal((9,131));b=r.standard_normal((6,131));"
        "s=lambda x:np.where(x<0,-1.,1.);"
        "assert (xnor_gemm(pack_signs(a),pack_signs(b),131)==s(a)@s(b).T).all();print('ok')"
    )
    env = {**os.environ, "NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": "",
           "NUMBA_CACHE_DIR": str(tmp_path)}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_import_does_not_compile_or_import_numba() -> None:
    code = "import sys, modelzip, modelzip.kernels; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
