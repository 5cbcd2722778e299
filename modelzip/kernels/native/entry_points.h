// The Python interface of both native builds, included once by each (avx512.cpp, avx2.cpp): the
// entry points over the two kernels the including file defines (declared below without a body)
// and the bindings. Each build's entry points are in its own namespace, MODELZIP_ISA (a compiler
// flag of the build: modelzip/kernels/_native.py), so both extensions can be loaded in one
// process.
#pragma once
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "int8_conv.h"
#include "int8_gemv.h"
#include "sign_pack.h"
#include "tt_conv.h"
#include "uint8_pool.h"

namespace {

// The XNOR-popcount GEMM of a (M, W packed words) and bt (W, Np): the counts into C (int32), or
// with Affine the scaled, biased and corrected outputs into Y (corr has L rows).
template <bool Affine>
void xnor_run(const torch::Tensor& a, const torch::Tensor& bt, int64_t n, int64_t k, int32_t* C,
              float* Y, const float* corr, int64_t L, const float* alpha, const float* beta);

// Rows 4 br .. 4 br + 3 of Y (Mp x n) = W x X, W in BSR with 4 x 4 blocks (ip, ix, B).
void bsr4_block_row(const int64_t* ip, const int64_t* ix, const float* B, const float* X,
                    float* Y, int64_t n, int64_t br);

}  // namespace

namespace MODELZIP_ISA {

// a: (M, W) packed words; bt: (W, Np) the other operand transposed, Np a multiple of 16.
torch::Tensor xnor_gemm(torch::Tensor a, torch::Tensor bt, int64_t n, int64_t k) {
  auto c = torch::empty({a.size(0), n}, torch::kInt32);
  xnor_run<false>(a, bt, n, k, c.data_ptr<int32_t>(), nullptr, nullptr, 1, nullptr, nullptr);
  return c;
}

// rows: a per-row scale (XNOR-Net's K or beta), or empty: ((t - corr) * alpha) * rows_i + beta.
torch::Tensor xnor_gemm_affine(torch::Tensor a, torch::Tensor bt, int64_t n, int64_t k,
                               torch::Tensor corr, torch::Tensor alpha, torch::Tensor beta,
                               torch::Tensor rows) {
  const int64_t M = a.size(0);
  auto y = torch::empty({M, n}, torch::kFloat32);
  if (rows.numel() == 0) {
    xnor_run<true>(a, bt, n, k, nullptr, y.data_ptr<float>(), corr.data_ptr<float>(),
                   corr.size(0), alpha.data_ptr<float>(), beta.data_ptr<float>());
    return y;
  }
  TORCH_CHECK(rows.numel() == M, "xnor_gemm_affine: one row scale per row");
  std::vector<float> zero(n, 0.0f);
  float* Y = y.data_ptr<float>();
  xnor_run<true>(a, bt, n, k, nullptr, Y, corr.data_ptr<float>(), corr.size(0),
                 alpha.data_ptr<float>(), zero.data());
  const float* r = rows.data_ptr<float>();
  const float* be = beta.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(n, 1)),
                   [&](int64_t lo, int64_t hi) {
                     for (int64_t i = lo; i < hi; ++i)
                       for (int64_t j = 0; j < n; ++j) Y[i * n + j] = Y[i * n + j] * r[i] + be[j];
                   });
  return y;
}

// Y (Mp x n) = W x X for W in BSR with 4 x 4 blocks; X (Kp x n) float32, row-major.
torch::Tensor bsr4_matmul(torch::Tensor indptr, torch::Tensor indices, torch::Tensor blocks,
                          torch::Tensor x, int64_t rows) {
  const int64_t n = x.size(1), brows = indptr.size(0) - 1;
  auto y = torch::zeros({rows, n}, torch::kFloat32);
  const int64_t* ip = indptr.data_ptr<int64_t>();
  const int64_t* ix = indices.data_ptr<int64_t>();
  const float* B = blocks.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, brows, 4, [&](int64_t lo, int64_t hi) {
    for (int64_t br = lo; br < hi; ++br) bsr4_block_row(ip, ix, B, X, Y, n, br);
  });
  return y;
}

}  // namespace MODELZIP_ISA

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("xnor_gemm", &MODELZIP_ISA::xnor_gemm, "XNOR-popcount GEMM, int32 result");
  m.def("xnor_gemm_affine", &MODELZIP_ISA::xnor_gemm_affine,
        "XNOR-popcount GEMM with scale, bias, correction");
  m.def("sign_im2col", &MODELZIP_ISA::sign_im2col,
        "sign bits of a channels-last image as the XNOR conv's packed im2col (+ K map)");
  m.def("sign_pack", &MODELZIP_ISA::sign_pack, "sign bits of rows (+ their mean |x|)");
  m.def("int8_conv_small_k", &MODELZIP_ISA::int8_conv_small_k,
        "static int8 conv over few inputs per output (a first layer), channels-last codes");
  m.def("int8_gemv_pack", &MODELZIP_ISA::int8_gemv_pack,
        "int8 codes (N, K) packed for int8_gemv (this build's blocks of outputs)");
  m.def("int8_gemv", &MODELZIP_ISA::int8_gemv,
        "dynamic int8 linear: float in (8-bit codes with VNNI, else 7), float out");
  m.def("int8_gemv_chain", &MODELZIP_ISA::int8_gemv_chain,
        "dynamic int8 linears one after the other in one call");
  m.def("int8_gemm_static", &MODELZIP_ISA::int8_gemm_static,
        "static int8 linear: quint8 or float in (fixed grid), quint8 out (VNNI only)");
  m.def("uint8_max_pool2x2", &MODELZIP_ISA::uint8_max_pool2x2,
        "2x2 max pooling of a channels-last quint8 tensor, on its codes");
  m.def("bsr4_matmul", &MODELZIP_ISA::bsr4_matmul, "BSR (4 x 4 blocks) times dense");
  m.def("tt_conv2d", &MODELZIP_ISA::tt_conv2d, "fused TT-conv forward");
}
