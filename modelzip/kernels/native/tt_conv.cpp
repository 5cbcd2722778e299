// Fused TT-conv forward (Garipov et al. 2016) for modelzip.kernels.tt_conv.FusedTTConv2d.
//
// Hand-written because no library runs a tensor-train contraction per pixel at GEMM speed: the
// chain of small contractions (K, N of 16-128) is memory-bound when each step is a separate
// batched GEMM over the whole feature map (every intermediate is as large as the input, and
// each step needs a strided copy to bring its contracted modes together).
//
// Here the 16 SIMD lanes are 16 output pixels, so every intermediate is an array of 16-pixel
// vectors and any permutation of its modes is only addressing: a step reads rows through
// precomputed offsets (row_in + k_off) and writes through (row_out + col_out), with no copies.
// Per tile of 16 pixels (kept in L1/L2 by one thread):
//   1. spatial: z[i, a] = sum_tap x[i, pixel + tap] * G[tap, a] (masked loads handle padding);
//   2. one step per group of merged TT cores: out[m, n] = sum_k in[m, k] * W[k, n], a register
//      tile of 16-pixel accumulators (see run_step), W broadcast from L1;
//   3. the last state (the output channels) + bias, stored with the tile's lane mask.
// Threads: at::parallel_for over (image, tile).
//
// This file holds the AVX-512 register tiles, spatial filters and output store; the rest (the
// arguments, the step tiling, the tile loop) is tt_conv_driver.h's, shared with the AVX2 build
// (tt_conv_avx2.cpp).
#include <immintrin.h>

#include "tt_conv_driver.h"

namespace {

template <int R, int C>
inline void block(const Step& s, const float* in, float* out, int64_t m0, int64_t n0) {
  __m512 acc[R][C];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const float* p[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) p[r] = in + static_cast<int64_t>(s.row_in[m0 + r]) * 16;
  const float* w = s.w + n0;
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t ko = static_cast<int64_t>(s.k_off[k]) * 16;
    __m512 v[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) v[r] = _mm512_loadu_ps(p[r] + ko);
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) {
      const __m512 b = _mm512_set1_ps(w[k * s.N + c]);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(v[r], b, acc[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c)
      _mm512_storeu_ps(out + (static_cast<int64_t>(s.row_out[m0 + r]) + s.col_out[n0 + c]) * 16,
                       acc[r][c]);
}

// Register tiles, measured on the benchmark layer (4⁴ modes, ranks 4-8, one Zen 4 core): 1 x 16
// 36.9 ms, 6 x 4 37.7, 4 x 4 38.9, 2 x 8 40.8, 8 x 2 44.6. With one row per tile each weight is
// used once, so the compiler folds its broadcast into the FMA ({1to16}); tiles sharing a broadcast
// across rows issue it as a separate instruction, which here competes with the FMAs.
void run_step(const Step& s, const float* in, float* out) {
  if (s.N % 16 == 0) return run_tiled<1, 16>(s, in, out);
  run_tiled<4, 4>(s, in, out);
}

template <int NA>
inline void spatial_filters(const float* xi, const int64_t* base, const int32_t* mask,
                            int64_t taps, const float* G, int64_t r0, float* z) {
  __m512 acc[NA];
  for (int a = 0; a < NA; ++a) acc[a] = _mm512_setzero_ps();
  for (int64_t tp = 0; tp < taps; ++tp) {
    const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask[tp]), xi + base[tp]);
    const float* g = G + tp * r0;
    for (int a = 0; a < NA; ++a) acc[a] = _mm512_fmadd_ps(v, _mm512_set1_ps(g[a]), acc[a]);
  }
  for (int a = 0; a < NA; ++a) _mm512_store_ps(z + a * 16, acc[a]);
}

const int32_t* tile_lanes(const int32_t* masks, int64_t, int32_t*) { return masks; }

void store_channels(const float* in, int32_t omask, const float* bias, int64_t O, int64_t plane,
                    float* y) {
  const __mmask16 om = static_cast<__mmask16>(omask);
  for (int64_t o = 0; o < O; ++o) {
    __m512 v = _mm512_load_ps(in + o * 16);
    if (bias) v = _mm512_add_ps(v, _mm512_set1_ps(bias[o]));
    _mm512_mask_storeu_ps(y + o * plane, om, v);
  }
}

}  // namespace
