// AVX-512 kernels for modelzip.kernels (built by modelzip/kernels/_native.py on first use).
//
// Hand-written because Numba cannot hold SIMD accumulators in registers: its XNOR GEMM reduces
// each output across the words of a zmm register (a horizontal sum per output), and its BSR
// kernel reads and writes the output rows once per block. Here the accumulators are explicit:
//  * xnor: an 8 x 16 output tile in 16 zmm registers of int64 counts; per packed word, two zmm
//    loads of B (transposed, so 8 consecutive output columns share one register), 8 broadcasts
//    of A and 16 XOR + VPOPCNTQ + ADD;
//  * bsr 4x4: a 4 x 64 output tile in 16 zmm float registers; per block, 16 X loads and 64 FMAs.
// Threads: at::parallel_for (OpenMP) over row tiles. The fused TT-conv is in tt_conv.cpp, the
// entry points and bindings (shared with avx2.cpp) in entry_points.h.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "entry_points.h"

namespace {

template <bool Affine>
void xnor_tile(const uint64_t* A, int64_t W, const uint64_t* Bt, int64_t Np, int64_t i0,
               int64_t rows, int64_t j0, int64_t N, int64_t k, int32_t* C, float* Y,
               const float* corr, int64_t L, const float* alpha, const float* beta) {
  __m512i acc[8][2];
  for (int r = 0; r < 8; ++r) {
    acc[r][0] = _mm512_setzero_si512();
    acc[r][1] = _mm512_setzero_si512();
  }
  for (int64_t w = 0; w < W; ++w) {
    const __m512i b0 = _mm512_loadu_si512(static_cast<const void*>(Bt + w * Np + j0));
    const __m512i b1 = _mm512_loadu_si512(static_cast<const void*>(Bt + w * Np + j0 + 8));
    for (int r = 0; r < 8; ++r) {
      if (r >= rows) break;
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(A[(i0 + r) * W + w]));
      acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, b0)));
      acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, b1)));
    }
  }
  const int64_t valid = std::min<int64_t>(16, N - j0);
  const __mmask8 m0 = valid >= 8 ? 0xFF : static_cast<__mmask8>((1u << valid) - 1);
  const __mmask8 m1 = valid <= 8 ? 0 : static_cast<__mmask8>((1u << (valid - 8)) - 1);
  const __m512i kk = _mm512_set1_epi64(k);
  for (int r = 0; r < rows; ++r) {
    const __m512i t0 = _mm512_sub_epi64(kk, _mm512_slli_epi64(acc[r][0], 1));
    const __m512i t1 = _mm512_sub_epi64(kk, _mm512_slli_epi64(acc[r][1], 1));
    if constexpr (Affine) {
      // (t - corr[i mod L, j]) * alpha[j] + beta[j], stored as float32.
      const float* cr = corr + ((i0 + r) % L) * N + j0;
      float* y = Y + (i0 + r) * N + j0;
      const __mmask16 m = static_cast<__mmask16>(m0 | (static_cast<unsigned>(m1) << 8));
      const __m512 t = _mm512_insertf32x8(
          _mm512_castps256_ps512(_mm512_cvtepi64_ps(t0)), _mm512_cvtepi64_ps(t1), 1);
      const __m512 c = _mm512_maskz_loadu_ps(m, cr);
      const __m512 al = _mm512_maskz_loadu_ps(m, alpha + j0);
      const __m512 be = _mm512_maskz_loadu_ps(m, beta + j0);
      _mm512_mask_storeu_ps(y, m, _mm512_fmadd_ps(_mm512_sub_ps(t, c), al, be));
    } else {
      _mm512_mask_cvtepi64_storeu_epi32(C + (i0 + r) * N + j0, m0, t0);
      _mm512_mask_cvtepi64_storeu_epi32(C + (i0 + r) * N + j0 + 8, m1, t1);
    }
  }
}

template <bool Affine>
void xnor_run(const torch::Tensor& a, const torch::Tensor& bt, int64_t n, int64_t k,
              int32_t* C, float* Y, const float* corr, int64_t L, const float* alpha,
              const float* beta) {
  const int64_t M = a.size(0), W = a.size(1), Np = bt.size(1);
  const auto* A = reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>());
  const auto* Bt = reinterpret_cast<const uint64_t*>(bt.data_ptr<int64_t>());
  at::parallel_for(0, (M + 7) / 8, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i0 = t * 8, rows = std::min<int64_t>(8, M - i0);
      for (int64_t j0 = 0; j0 < n; j0 += 16)
        xnor_tile<Affine>(A, W, Bt, Np, i0, rows, j0, n, k, C, Y, corr, L, alpha, beta);
    }
  });
}

void bsr4_block_row(const int64_t* ip, const int64_t* ix, const float* B, const float* X,
                    float* Y, int64_t n, int64_t br) {
  for (int64_t n0 = 0; n0 < n; n0 += 64) {
    const int64_t cnt = std::min<int64_t>(64, n - n0);
    __mmask16 m[4];
    for (int q = 0; q < 4; ++q) {
      const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, cnt - 16 * q));
      m[q] = static_cast<__mmask16>(left == 16 ? 0xFFFF : (1u << left) - 1);
    }
    __m512 acc[4][4];
    for (int r = 0; r < 4; ++r)
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
    for (int64_t t = ip[br]; t < ip[br + 1]; ++t) {
      const float* b = B + t * 16;
      const float* xr = X + ix[t] * 4 * n + n0;
      for (int c = 0; c < 4; ++c) {
        __m512 xv[4];
        for (int q = 0; q < 4; ++q) xv[q] = _mm512_maskz_loadu_ps(m[q], xr + c * n + 16 * q);
        for (int r = 0; r < 4; ++r) {
          const __m512 v = _mm512_set1_ps(b[r * 4 + c]);
          for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_fmadd_ps(v, xv[q], acc[r][q]);
        }
      }
    }
    for (int r = 0; r < 4; ++r)
      for (int q = 0; q < 4; ++q)
        _mm512_mask_storeu_ps(Y + (br * 4 + r) * n + n0 + 16 * q, m[q], acc[r][q]);
  }
}

}  // namespace
