// A dynamic int8 linear layer for a few rows (batch 1 to 8), in both native builds. At batch 1
// the product is one pass over the weights (25 MB of int8 codes for the MLP 1024-4096-4096-1024),
// so its speed is how fast the codes stream in: fbgemm's and onnxruntime's int8 GEMMs are made
// for many rows and pack the input and walk the weights in tiles meant for reuse that a single
// row does not have. Here each thread streams its own slice of output blocks front to back: the
// weights are packed once as (N / B, K / 4, B, 4) (B = 64 outputs with AVX-512, 32 with AVX2),
// so a step over 4 input codes reads B x 4 contiguous bytes, one vector per 16 (8) outputs, and
// every row's broadcast word of 4 input codes multiplies them:
//  * VPDPBUSD (u8 x s8, four products per lane) where the CPU has AVX-512 VNNI;
//  * VPMADDUBSW + VPMADDWD otherwise: the input codes are then on 7 bits (0..127, as fbgemm's
//    dynamic linear with reduce_range), so pairs of products fit int16 exactly.
// The input is quantized here per call, per tensor, its range widened to hold 0 (as onnxruntime's
// DynamicQuantizeLinear), on 255 steps with VNNI and 127 without (NaN read as 0); each output is
// (acc - zero * sum_k w) * in_scale * w_scale + bias. Written by hand: no library offers an int8
// GEMV that PyTorch can call without packing the input as for a GEMM.
#pragma once
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

#if defined(__AVX512F__)
using GVec = __m512i;
constexpr int kGemvLanes = 16;  // int32 lanes of a vector: outputs per vector
inline GVec gemv_load(const int8_t* p) { return _mm512_loadu_si512(p); }
inline GVec gemv_set1(uint32_t v) { return _mm512_set1_epi32(static_cast<int32_t>(v)); }
inline GVec gemv_zero() { return _mm512_setzero_si512(); }
inline void gemv_store(int32_t* p, GVec v) { _mm512_storeu_si512(p, v); }
inline GVec gemv_quad7(GVec acc, GVec x, GVec w) {
  const GVec p = _mm512_maddubs_epi16(x, w);
  return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}
__attribute__((target("avx512vnni"))) inline GVec gemv_vnni(GVec acc, GVec x, GVec w) {
  return _mm512_dpbusd_epi32(acc, x, w);
}
constexpr int kGemvRows = 4;  // rows per tile: 4 x 4 accumulators + 4 weight vectors
#else
using GVec = __m256i;
constexpr int kGemvLanes = 8;
inline GVec gemv_load(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline GVec gemv_set1(uint32_t v) { return _mm256_set1_epi32(static_cast<int32_t>(v)); }
inline GVec gemv_zero() { return _mm256_setzero_si256(); }
inline void gemv_store(int32_t* p, GVec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline GVec gemv_quad7(GVec acc, GVec x, GVec w) {
  const GVec p = _mm256_maddubs_epi16(x, w);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
constexpr int kGemvRows = 2;  // 16 registers: 2 x 4 accumulators, 4 weights, the broadcast
#endif
constexpr int kGemvVecs = 4;                       // vectors of outputs per block
constexpr int kGemvOut = kGemvVecs * kGemvLanes;   // outputs per block (B)

// acc (R x B int32) of rows X[0..R) (words of 4 codes, row stride xs) times one packed block.
#define MODELZIP_GEMV_TILE(DOT)                                                     \
  GVec acc[R][kGemvVecs];                                                           \
  for (int r = 0; r < R; ++r)                                                       \
    for (int j = 0; j < kGemvVecs; ++j) acc[r][j] = gemv_zero();                    \
  for (int64_t k = 0; k < K4; ++k) {                                                \
    const int8_t* p = P + k * kGemvOut * 4;                                         \
    GVec w[kGemvVecs];                                                              \
    for (int j = 0; j < kGemvVecs; ++j) w[j] = gemv_load(p + j * kGemvLanes * 4);   \
    for (int r = 0; r < R; ++r) {                                                   \
      const GVec xb = gemv_set1(X[r * xs + k]);                                     \
      for (int j = 0; j < kGemvVecs; ++j) acc[r][j] = DOT(acc[r][j], xb, w[j]);     \
    }                                                                               \
  }                                                                                 \
  for (int r = 0; r < R; ++r)                                                       \
    for (int j = 0; j < kGemvVecs; ++j) gemv_store(out + r * kGemvOut + j * kGemvLanes, acc[r][j]);

template <int R>
void gemv_tile_quad7(const uint32_t* X, int64_t xs, int64_t K4, const int8_t* P, int32_t* out) {
  MODELZIP_GEMV_TILE(gemv_quad7)
}
#if defined(__AVX512F__)
template <int R>
__attribute__((target("avx512vnni"))) void gemv_tile_vnni(const uint32_t* X, int64_t xs,
                                                          int64_t K4, const int8_t* P,
                                                          int32_t* out) {
  MODELZIP_GEMV_TILE(gemv_vnni)
}
#endif
#undef MODELZIP_GEMV_TILE

using GemvTile = void (*)(const uint32_t*, int64_t, int64_t, const int8_t*, int32_t*);

// The tile function for R rows (1..kGemvRows) on the chosen path.
GemvTile gemv_tile(int rows, bool vnni) {
#if defined(__AVX512F__)
  if (vnni) {
    static const GemvTile t[] = {gemv_tile_vnni<1>, gemv_tile_vnni<2>, gemv_tile_vnni<3>,
                                 gemv_tile_vnni<4>};
    return t[rows - 1];
  }
  static const GemvTile q[] = {gemv_tile_quad7<1>, gemv_tile_quad7<2>, gemv_tile_quad7<3>,
                               gemv_tile_quad7<4>};
  return q[rows - 1];
#else
  (void)vnni;
  static const GemvTile q[] = {gemv_tile_quad7<1>, gemv_tile_quad7<2>};
  return q[rows - 1];
#endif
}

}  // namespace

namespace MODELZIP_ISA {

// codes (N, K) int8 -> (ceil(N / B), ceil(K / 4), B, 4) int8, zero-padded (this build's B).
torch::Tensor int8_gemv_pack(torch::Tensor codes) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == torch::kInt8,
              "int8_gemv_pack: codes must be 2-D int8");
  auto w = codes.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t Nb = (N + kGemvOut - 1) / kGemvOut, K4 = (K + 3) / 4;
  auto packed = torch::zeros({Nb, K4, kGemvOut, 4}, torch::kInt8);
  const int8_t* W = w.data_ptr<int8_t>();
  int8_t* P = packed.data_ptr<int8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      P[(((n / kGemvOut) * K4 + k / 4) * kGemvOut + n % kGemvOut) * 4 + k % 4] = W[n * K + k];
  return packed;
}

// y (M, n) = x W^T + bias, x (M, K) float32 quantized here per call (8 bits with VNNI, else 7);
// packed from int8_gemv_pack, colsum (n) int32 = sum_k W[o, k], w_scale (n) float32, bias (n)
// float32 or empty. path: 0 VPDPBUSD where the CPU has it, 1 VPMADDUBSW (tests).
torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor packed, torch::Tensor colsum,
                        torch::Tensor w_scale, torch::Tensor bias, int64_t n, int64_t path) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "int8_gemv: x must be 2-D float32");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kGemvOut && packed.size(3) == 4,
              "int8_gemv: packed weights of another build (", packed.size(2), " outputs per block)");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), K4 = packed.size(1), Nb = packed.size(0);
  TORCH_CHECK((K + 3) / 4 == K4 && n <= Nb * kGemvOut, "int8_gemv: x has ", K,
              " features, the weights ", K4 * 4);
  TORCH_CHECK(colsum.numel() == n && w_scale.numel() == n, "int8_gemv: one colsum, scale per output");
  const float* xv = x.data_ptr<float>();
#if defined(__AVX512F__)
  const bool vnni = path == 0 && __builtin_cpu_supports("avx512vnni");
#else
  const bool vnni = false;
#endif
  // The grid: the range widened to hold 0, on 255 steps with VNNI (its u8 x s8 products do not
  // saturate) and 127 without (NaN compares false and is skipped).
  const float qmax = vnni ? 255.0f : 127.0f;
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < M * K; ++i) {
    lo = xv[i] < lo ? xv[i] : lo;
    hi = xv[i] > hi ? xv[i] : hi;
  }
  float scale = (hi - lo) / qmax;
  if (!(scale > 0.0f) || !std::isfinite(scale)) scale = 1.0f;
  const float zf = std::nearbyint(-lo / scale);
  const int32_t zero = static_cast<int32_t>(std::min(std::max(zf, 0.0f), qmax));
  const float inv = 1.0f / scale;
  std::vector<uint32_t> words(static_cast<size_t>(M * K4), 0);
  auto* codes = reinterpret_cast<uint8_t*>(words.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const float v = xv[m * K + k];
      float q = std::nearbyint(v * inv) + static_cast<float>(zero);
      q = std::isnan(q) ? static_cast<float>(zero) : std::min(std::max(q, 0.0f), qmax);
      codes[m * K4 * 4 + k] = static_cast<uint8_t>(q);
    }
  auto y = torch::empty({M, n}, torch::kFloat32);
  float* Y = y.data_ptr<float>();
  const int8_t* P = packed.data_ptr<int8_t>();
  const int32_t* CS = colsum.data_ptr<int32_t>();
  const float* WS = w_scale.data_ptr<float>();
  const float* B = bias.numel() ? bias.data_ptr<float>() : nullptr;
  // A thread gets at least 512 KB of codes: waking a second one from a passive wait took longer
  // than LeNet-300's 300 x 784 layer alone (0.05 ms on 2 threads, 0.01 on one).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 19) / (K4 * kGemvOut * 4));
  at::parallel_for(0, Nb, grain, [&](int64_t b0, int64_t b1) {
    alignas(64) int32_t acc[kGemvRows * kGemvOut];
    for (int64_t nb = b0; nb < b1; ++nb) {
      const int64_t o0 = nb * kGemvOut, outs = std::min<int64_t>(kGemvOut, n - o0);
      for (int64_t m0 = 0; m0 < M; m0 += kGemvRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kGemvRows, M - m0));
        gemv_tile(rows, vnni)(words.data() + m0 * K4, K4, K4, P + nb * K4 * kGemvOut * 4, acc);
        for (int r = 0; r < rows; ++r)
          for (int64_t j = 0; j < outs; ++j) {
            const int64_t o = o0 + j;
            const float v = static_cast<float>(acc[r * kGemvOut + j] - zero * CS[o]) * scale * WS[o];
            Y[(m0 + r) * n + o] = B ? v + B[o] : v;
          }
      }
    }
  });
  return y;
}

}  // namespace MODELZIP_ISA
