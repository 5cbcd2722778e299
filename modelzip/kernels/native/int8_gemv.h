// A dynamic int8 linear layer, in both native builds. At batch 1 the product is one pass over
// the weights (25 MB of int8 codes for the MLP 1024-4096-4096-1024), so its speed is how fast the
// codes stream in: fbgemm's and onnxruntime's int8 GEMMs are made for many rows and pack the
// input and walk the weights in tiles meant for reuse that a single row does not have. Here each
// thread streams its own slice of output blocks front to back: the weights are packed once as
// (N / B, K / 4, B, 4) (B = 64 outputs with AVX-512, 32 with AVX2), so a step over 4 input codes
// reads B x 4 contiguous bytes, one vector per 16 (8) outputs, and every row's broadcast word of 4
// input codes multiplies them:
//  * VPDPBUSD (u8 x s8, four products per lane) where the CPU has AVX-512 VNNI;
//  * VPMADDUBSW + VPMADDWD otherwise: the input codes are then on 7 bits (0..127, as fbgemm's
//    dynamic linear with reduce_range), so pairs of products fit int16 exactly.
// Rows go in tiles of up to 6 (AVX-512: 24 accumulators) or 2 (AVX2: 16 registers), each weight
// vector loaded once per tile; a block's weights (256 KB at K = 4096) stay in L2 across the
// tiles. With VNNI that reaches 90% of the VPDPBUSD peak at 64 rows, ahead of fbgemm and
// onnxruntime; without it the engine keeps to a few rows (kernels/int8_gemv.py, MAX_ROWS).
// The input is quantized here per call, per tensor, its range widened to hold 0 (as
// onnxruntime's DynamicQuantizeLinear), on 255 steps with VNNI and 127 without (NaN read as 0);
// each output is (acc - zero * sum_k w) * in_scale * w_scale + bias. The static linear
// (int8_gemm_static) runs the same blocks on quint8 codes, or on a fixed grid, and requantizes.
// Written by hand: no library offers an int8 GEMM that PyTorch can call with the input quantized
// inside it.
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
constexpr int kGemvRows = 6;  // rows per tile: 6 x 4 accumulators + 4 weight vectors + broadcast
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
// The accumulators are named variables, not an array: GCC 12 kept an array of them on the stack,
// storing every accumulator at every step (3.5 ms instead of 2.6 for 64 rows of 4096 x 4096).
#define MODELZIP_GEMV_DECL(r) GVec a##r##0 = gemv_zero(), a##r##1 = a##r##0, a##r##2 = a##r##0, \
                                   a##r##3 = a##r##0;
#define MODELZIP_GEMV_ROW(DOT, r)                                                     \
  if constexpr (R > r) {                                                            \
    const GVec xb = gemv_set1(X[r * xs + k]);                                       \
    a##r##0 = DOT(a##r##0, xb, w0);                                                 \
    a##r##1 = DOT(a##r##1, xb, w1);                                                 \
    a##r##2 = DOT(a##r##2, xb, w2);                                                 \
    a##r##3 = DOT(a##r##3, xb, w3);                                                 \
  }
#define MODELZIP_GEMV_STORE(r)                                                        \
  if constexpr (R > r) {                                                            \
    gemv_store(out + r * kGemvOut, a##r##0);                                        \
    gemv_store(out + r * kGemvOut + kGemvLanes, a##r##1);                           \
    gemv_store(out + r * kGemvOut + 2 * kGemvLanes, a##r##2);                       \
    gemv_store(out + r * kGemvOut + 3 * kGemvLanes, a##r##3);                       \
  }
#define MODELZIP_GEMV_TILE(DOT)                                                       \
  static_assert(R >= 1 && R <= 6 && kGemvVecs == 4, "tiles of 1 to 6 rows, 4 vectors"); \
  MODELZIP_GEMV_DECL(0) MODELZIP_GEMV_DECL(1) MODELZIP_GEMV_DECL(2)                   \
  MODELZIP_GEMV_DECL(3) MODELZIP_GEMV_DECL(4) MODELZIP_GEMV_DECL(5)                   \
  for (int64_t k = 0; k < K4; ++k) {                                                \
    const int8_t* p = P + k * kGemvOut * 4;                                         \
    const GVec w0 = gemv_load(p), w1 = gemv_load(p + kGemvLanes * 4),               \
               w2 = gemv_load(p + 2 * kGemvLanes * 4), w3 = gemv_load(p + 3 * kGemvLanes * 4); \
    MODELZIP_GEMV_ROW(DOT, 0) MODELZIP_GEMV_ROW(DOT, 1) MODELZIP_GEMV_ROW(DOT, 2)   \
    MODELZIP_GEMV_ROW(DOT, 3) MODELZIP_GEMV_ROW(DOT, 4) MODELZIP_GEMV_ROW(DOT, 5)   \
  }                                                                                 \
  MODELZIP_GEMV_STORE(0) MODELZIP_GEMV_STORE(1) MODELZIP_GEMV_STORE(2)              \
  MODELZIP_GEMV_STORE(3) MODELZIP_GEMV_STORE(4) MODELZIP_GEMV_STORE(5)

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
#undef MODELZIP_GEMV_STORE
#undef MODELZIP_GEMV_ROW
#undef MODELZIP_GEMV_DECL

using GemvTile = void (*)(const uint32_t*, int64_t, int64_t, const int8_t*, int32_t*);

// The tile function for R rows (1..kGemvRows) on the chosen path.
GemvTile gemv_tile(int rows, bool vnni) {
#if defined(__AVX512F__)
  if (vnni) {
    static const GemvTile t[] = {gemv_tile_vnni<1>, gemv_tile_vnni<2>, gemv_tile_vnni<3>,
                                 gemv_tile_vnni<4>, gemv_tile_vnni<5>, gemv_tile_vnni<6>};
    return t[rows - 1];
  }
  static const GemvTile q[] = {gemv_tile_quad7<1>, gemv_tile_quad7<2>, gemv_tile_quad7<3>,
                               gemv_tile_quad7<4>, gemv_tile_quad7<5>, gemv_tile_quad7<6>};
  return q[rows - 1];
#else
  (void)vnni;
  static const GemvTile q[] = {gemv_tile_quad7<1>, gemv_tile_quad7<2>};
  return q[rows - 1];
#endif
}


// The range [lo, hi] of x (n floats), widened to hold 0; NaN skipped (MIN/MAX return their
// second operand when one is NaN).
void gemv_range(const float* x, int64_t n, float& lo_out, float& hi_out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(v, lo);
    hi = _mm512_max_ps(v, hi);
  }
  float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
#else
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo = _mm256_min_ps(v, lo);
    hi = _mm256_max_ps(v, hi);
  }
  alignas(32) float ls[8], hs[8];
  _mm256_store_ps(ls, lo);
  _mm256_store_ps(hs, hi);
  float l = 0.0f, h = 0.0f;
  for (int j = 0; j < 8; ++j) {
    l = std::min(l, ls[j]);
    h = std::max(h, hs[j]);
  }
#endif
  for (; i < n; ++i) {
    l = x[i] < l ? x[i] : l;
    h = x[i] > h ? x[i] : h;
  }
  lo_out = l;
  hi_out = h;
}

// codes[k] = clamp(round(x[k] * inv) + zero, 0, qmax) for k < K (NaN -> zero).
inline uint8_t gemv_code(float v, float inv, float zero, float qmax) {
  const float q = std::nearbyint(v * inv) + zero;
  return static_cast<uint8_t>(std::isnan(q) ? zero : std::min(std::max(q, 0.0f), qmax));
}
void gemv_quantize_row(const float* x, int64_t K, float inv, float zero, float qmax,
                       uint8_t* codes) {
  int64_t k = 0;
#if defined(__AVX512F__)
  const __m512 vi = _mm512_set1_ps(inv), vz = _mm512_set1_ps(zero), vq = _mm512_set1_ps(qmax);
  const __m512 v0 = _mm512_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    const __mmask16 ok = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(v, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_add_ps(_mm512_maskz_mov_ps(ok, q), vz);
    q = _mm512_min_ps(_mm512_max_ps(q, v0), vq);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
  }
#else
  const __m256 vi = _mm256_set1_ps(inv), vz = _mm256_set1_ps(zero), vq = _mm256_set1_ps(qmax);
  const __m256 v0 = _mm256_setzero_ps();
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; k + 32 <= K; k += 32) {
    __m256i w[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 v = _mm256_loadu_ps(x + k + 8 * j);
      __m256 q = _mm256_round_ps(_mm256_mul_ps(v, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm256_add_ps(_mm256_and_ps(q, _mm256_cmp_ps(v, v, _CMP_ORD_Q)), vz);
      w[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, v0), vq));
    }
    // packs interleave the 128-bit lanes: 32 codes in the order 0 4 1 5 2 6 3 7 of 4-byte groups
    const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(w[0], w[1]), _mm256_packs_epi32(w[2], w[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + k), _mm256_permutevar8x32_epi32(b, order));
  }
#endif
  for (; k < K; ++k) codes[k] = gemv_code(x[k], inv, zero, qmax);
}

// Y[r, o0 + j] = (acc[r, j] - zero * colsum[o]) * scale * w_scale[o] + bias[o], j < outs, and
// with relu at least 0.
void gemv_store_rows(const int32_t* acc, int rows, int64_t outs, int64_t o0, int32_t zero,
                     float scale, const int32_t* CS, const float* WS, const float* B, bool relu,
                     float* Y, int64_t n) {
  for (int r = 0; r < rows; ++r) {
    const int32_t* a = acc + r * kGemvOut;
    float* y = Y + r * n + o0;
    int64_t j = 0;
#if defined(__AVX512F__)
    const __m512i vz = _mm512_set1_epi32(zero);
    const __m512 vs = _mm512_set1_ps(scale);
    for (; j + 16 <= outs; j += 16) {
      const __m512i c = _mm512_sub_epi32(_mm512_loadu_si512(a + j),
                                         _mm512_mullo_epi32(vz, _mm512_loadu_si512(CS + o0 + j)));
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(vs, _mm512_loadu_ps(WS + o0 + j)));
      if (B) v = _mm512_add_ps(v, _mm512_loadu_ps(B + o0 + j));
      if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
      _mm512_storeu_ps(y + j, v);
    }
#else
    const __m256i vz = _mm256_set1_epi32(zero);
    const __m256 vs = _mm256_set1_ps(scale);
    for (; j + 8 <= outs; j += 8) {
      const __m256i c = _mm256_sub_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + j)),
          _mm256_mullo_epi32(vz, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(CS + o0 + j))));
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(vs, _mm256_loadu_ps(WS + o0 + j)));
      if (B) v = _mm256_add_ps(v, _mm256_loadu_ps(B + o0 + j));
      if (relu) v = _mm256_max_ps(v, _mm256_setzero_ps());
      _mm256_storeu_ps(y + j, v);
    }
#endif
    for (; j < outs; ++j) {
      const int64_t o = o0 + j;
      float v = static_cast<float>(a[j] - zero * CS[o]) * scale * WS[o];
      v = B ? v + B[o] : v;
      y[j] = relu ? std::max(v, 0.0f) : v;
    }
  }
}

// Each block of outputs times every tile of rows (words: M rows of K4 words of 4 input codes),
// the block's int32 sums then handed to store(acc, rows, outs, o0, m0).
template <class Store>
void gemm_blocks(const uint32_t* words, int64_t M, int64_t K4, const int8_t* P, int64_t Nb,
                 int64_t n, bool vnni, Store&& store) {
  // A thread gets at least 1 MB of codes times row tiles: waking a second one from a passive
  // wait took longer than LeNet-300's 300 x 784 layer alone at batch 1 (0.05 ms on 2 threads,
  // 0.01 on one); at batch 256 the same layer is 43 passes over its codes, one per tile of rows.
  if (M == 0 || Nb == 0) return;  // an empty batch: nothing to compute (and no division by 0)
  const int64_t tiles = (M + kGemvRows - 1) / kGemvRows;
  const int64_t bytes = std::max<int64_t>(1, K4 * kGemvOut * 4 * tiles);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / bytes);
  at::parallel_for(0, Nb, grain, [&](int64_t b0, int64_t b1) {
    alignas(64) int32_t acc[kGemvRows * kGemvOut];
    for (int64_t nb = b0; nb < b1; ++nb) {
      const int64_t o0 = nb * kGemvOut, outs = std::min<int64_t>(kGemvOut, n - o0);
      for (int64_t m0 = 0; m0 < M; m0 += kGemvRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kGemvRows, M - m0));
        gemv_tile(rows, vnni)(words + m0 * K4, K4, K4, P + nb * K4 * kGemvOut * 4, acc);
        store(acc, rows, outs, o0, m0);
      }
    }
  });
}

// Y[r, o0 + j] = clamp(round((acc[r, j] - corr[o]) * mult[o] + off[o]), lo, 255) as uint8.
void gemm_requantize_rows(const int32_t* acc, int rows, int64_t outs, int64_t o0,
                          const int32_t* corr, const float* mult, const float* off, int32_t lo,
                          uint8_t* Y, int64_t n) {
  for (int r = 0; r < rows; ++r) {
    const int32_t* a = acc + r * kGemvOut;
    uint8_t* y = Y + r * n + o0;
    int64_t j = 0;
#if defined(__AVX512F__)
    const __m512 vlo = _mm512_set1_ps(static_cast<float>(lo)), vhi = _mm512_set1_ps(255.0f);
    for (; j + 16 <= outs; j += 16) {
      const __m512i c = _mm512_sub_epi32(_mm512_loadu_si512(a + j), _mm512_loadu_si512(corr + o0 + j));
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_loadu_ps(mult + o0 + j),
                                 _mm512_loadu_ps(off + o0 + j));
      v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
#endif
    for (; j < outs; ++j) {
      const int64_t o = o0 + j;
      const float v = std::nearbyint(static_cast<float>(a[j] - corr[o]) * mult[o] + off[o]);
      y[j] = static_cast<uint8_t>(std::min(std::max(v, static_cast<float>(lo)), 255.0f));
    }
  }
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
// float32 or empty. path: 0 VPDPBUSD where the CPU has it, 1 VPMADDUBSW (tests). relu: each
// output clamped at 0 (a ReLU fused into the layer).
torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor packed, torch::Tensor colsum,
                        torch::Tensor w_scale, torch::Tensor bias, int64_t n, int64_t path,
                        bool relu) {
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
  gemv_range(xv, M * K, lo, hi);
  float scale = (hi - lo) / qmax;
  if (!(scale > 0.0f) || !std::isfinite(scale)) scale = 1.0f;
  const float zf = std::nearbyint(-lo / scale);
  const int32_t zero = static_cast<int32_t>(std::min(std::max(zf, 0.0f), qmax));
  const float inv = 1.0f / scale;
  std::vector<uint32_t> words(static_cast<size_t>(M * K4), 0);
  auto* codes = reinterpret_cast<uint8_t*>(words.data());
  for (int64_t m = 0; m < M; ++m)
    gemv_quantize_row(xv + m * K, K, inv, static_cast<float>(zero), qmax, codes + m * K4 * 4);
  auto y = torch::empty({M, n}, torch::kFloat32);
  float* Y = y.data_ptr<float>();
  const int8_t* P = packed.data_ptr<int8_t>();
  const int32_t* CS = colsum.data_ptr<int32_t>();
  const float* WS = w_scale.data_ptr<float>();
  const float* B = bias.numel() ? bias.data_ptr<float>() : nullptr;
  gemm_blocks(words.data(), M, K4, P, Nb, n, vnni,
              [&](const int32_t* acc, int rows, int64_t outs, int64_t o0, int64_t m0) {
                gemv_store_rows(acc, rows, outs, o0, zero, scale, CS, WS, B, relu, Y + m0 * n, n);
              });
  return y;
}

// Layers of int8_gemv one after the other (a run of dynamic int8 linears, each output the next
// one's input) in one call: the Python between the calls ran from cold caches.
torch::Tensor int8_gemv_chain(torch::Tensor x, std::vector<torch::Tensor> packed,
                              std::vector<torch::Tensor> colsum, std::vector<torch::Tensor> w_scale,
                              std::vector<torch::Tensor> bias, std::vector<int64_t> n,
                              std::vector<bool> relu, int64_t path) {
  const size_t layers = packed.size();
  TORCH_CHECK(layers > 0 && colsum.size() == layers && w_scale.size() == layers &&
                  bias.size() == layers && n.size() == layers && relu.size() == layers,
              "int8_gemv_chain: one packed, colsum, scale, bias, n and relu per layer");
  for (size_t i = 0; i < layers; ++i)
    x = int8_gemv(x, packed[i], colsum[i], w_scale[i], bias[i], n[i], path, relu[i]);
  return x;
}

// Static int8 linear: x (M, K) quint8 codes, or float32 quantized here on the fixed grid
// (in_mul = 1 / scale, in_zero, qmax), times the packed codes; each output requantized as
// clamp(round((acc - corr[o]) * mult[o] + off[o]), lo, 255) (corr = in_zero * colsum,
// mult = in_scale * w_scale / out_scale, off = out_zero + bias / out_scale; lo = out_zero for a
// fused ReLU, else 0) into a quint8 (M, n) tensor on (out_scale, out_zero). Codes up to 255 need
// VPDPBUSD: the AVX-512 build on a CPU with VNNI only (VPMADDUBSW would saturate).
torch::Tensor int8_gemm_static(torch::Tensor x, torch::Tensor packed, torch::Tensor corr,
                               torch::Tensor mult, torch::Tensor off, int64_t n, double in_mul,
                               int64_t in_zero, int64_t qmax, int64_t lo, double out_scale,
                               int64_t out_zero) {
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kQUInt8),
              "int8_gemm_static: x must be 2-D float32 or quint8");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kGemvOut && packed.size(3) == 4,
              "int8_gemm_static: packed weights of another build (", packed.size(2),
              " outputs per block)");
#if defined(__AVX512F__)
  const bool vnni = __builtin_cpu_supports("avx512vnni");
#else
  const bool vnni = false;
#endif
  TORCH_CHECK(vnni, "int8_gemm_static: needs AVX-512 VNNI (8-bit input codes)");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), K4 = packed.size(1), Nb = packed.size(0);
  TORCH_CHECK((K + 3) / 4 == K4 && n <= Nb * kGemvOut, "int8_gemm_static: x has ", K,
              " features, the weights ", K4 * 4);
  TORCH_CHECK(corr.numel() == n && mult.numel() == n && off.numel() == n,
              "int8_gemm_static: one corr, mult, off per output");
  std::vector<uint32_t> words(static_cast<size_t>(M * K4), 0);
  auto* codes = reinterpret_cast<uint8_t*>(words.data());
  if (x.is_quantized()) {
    const auto* X = reinterpret_cast<const uint8_t*>(x.data_ptr<c10::quint8>());
    for (int64_t m = 0; m < M; ++m) std::memcpy(codes + m * K4 * 4, X + m * K, K);
  } else {
    const float* X = x.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m)
      gemv_quantize_row(X + m * K, K, static_cast<float>(in_mul), static_cast<float>(in_zero),
                        static_cast<float>(qmax), codes + m * K4 * 4);
  }
  auto y = at::_empty_affine_quantized({M, n}, at::device(torch::kCPU).dtype(torch::kQUInt8),
                                       out_scale, out_zero);
  auto* Y = reinterpret_cast<uint8_t*>(y.data_ptr<c10::quint8>());
  const int32_t* C = corr.data_ptr<int32_t>();
  const float* Mu = mult.data_ptr<float>();
  const float* O = off.data_ptr<float>();
  const int32_t low = static_cast<int32_t>(lo);
  gemm_blocks(words.data(), M, K4, packed.data_ptr<int8_t>(), Nb, n, vnni,
              [&](const int32_t* acc, int rows, int64_t outs, int64_t o0, int64_t m0) {
                gemm_requantize_rows(acc, rows, outs, o0, C, Mu, O, low, Y + m0 * n, n);
              });
  return y;
}

}  // namespace MODELZIP_ISA
