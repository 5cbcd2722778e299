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
#include "tt_conv.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

struct Step {
  const float* w;  // K x N, row-major
  int64_t K, N, M;
  const int32_t* row_in;   // M: input offset of row m (in vectors)
  const int32_t* k_off;    // K: input offset of contracted index k
  const int32_t* row_out;  // M: output offset of row m
  const int32_t* col_out;  // N: output offset of column n
  int64_t src, dst;        // buffers: 0 = the spatial result z, 1.. = step results
};

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

template <int R, int C>
__attribute__((noinline)) void run_tiled(const Step& s, const float* in, float* out) {
  const int64_t Mb = s.M / R * R, Nb = s.N / C * C;
  for (int64_t m = 0; m < Mb; m += R) {
    for (int64_t n = 0; n < Nb; n += C) block<R, C>(s, in, out, m, n);
    for (int64_t n = Nb; n < s.N; ++n) block<R, 1>(s, in, out, m, n);
  }
  for (int64_t m = Mb; m < s.M; ++m) {
    for (int64_t n = 0; n < Nb; n += C) block<1, C>(s, in, out, m, n);
    for (int64_t n = Nb; n < s.N; ++n) block<1, 1>(s, in, out, m, n);
  }
}

// Register tiles, measured on the benchmark layer (4⁴ modes, ranks 4-8, one Zen 4 core): 1 x 16
// 36.9 ms, 6 x 4 37.7, 4 x 4 38.9, 2 x 8 40.8, 8 x 2 44.6. With one row per tile each weight is
// used once, so the compiler folds its broadcast into the FMA ({1to16}); tiles sharing a broadcast
// across rows issue it as a separate instruction, which here competes with the FMAs.
void run_step(const Step& s, const float* in, float* out) {
  if (s.N % 16 == 0) return run_tiled<1, 16>(s, in, out);
  run_tiled<4, 4>(s, in, out);
}

// z[a] (NA filters, a 16-pixel vector each) for one input channel plane xi. NA is a template
// parameter so that the accumulators stay in registers (a runtime count spills them: 4x slower).
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

void spatial_any(int64_t na, const float* xi, const int64_t* base, const int32_t* mask,
                 int64_t taps, const float* G, int64_t r0, float* z) {
  switch (na) {
    case 1: return spatial_filters<1>(xi, base, mask, taps, G, r0, z);
    case 2: return spatial_filters<2>(xi, base, mask, taps, G, r0, z);
    case 3: return spatial_filters<3>(xi, base, mask, taps, G, r0, z);
    case 4: return spatial_filters<4>(xi, base, mask, taps, G, r0, z);
    case 5: return spatial_filters<5>(xi, base, mask, taps, G, r0, z);
    case 6: return spatial_filters<6>(xi, base, mask, taps, G, r0, z);
    case 7: return spatial_filters<7>(xi, base, mask, taps, G, r0, z);
    default: return spatial_filters<8>(xi, base, mask, taps, G, r0, z);
  }
}

float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

}  // namespace

// x: [B, I, H, W] float32 NCHW; spatial: [taps, r0]; tile_in, tile_mask: [T, taps] (flat input
// offset of lane 0 within a channel plane, lane mask); tile_out, tile_omask: [T]; per step the
// weight (K x N), four int32 offset tables and its source and destination buffers (buffers:
// [zsize, bufsize x nbuf] vectors, z[i * r0 + a] with i over the padded input modes first); the
// output channels are read from buffer out_buf after the last step.
torch::Tensor tt_conv2d(torch::Tensor x, torch::Tensor spatial, torch::Tensor tile_in,
                        torch::Tensor tile_mask, torch::Tensor tile_out, torch::Tensor tile_omask,
                        std::vector<torch::Tensor> weights, std::vector<torch::Tensor> row_in,
                        std::vector<torch::Tensor> k_off, std::vector<torch::Tensor> row_out,
                        std::vector<torch::Tensor> col_out, std::vector<int64_t> src,
                        std::vector<int64_t> dst, torch::Tensor bias, int64_t O, int64_t P,
                        int64_t Q, int64_t zsize, int64_t bufsize, int64_t nbuf, int64_t out_buf) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "tt_conv2d: x must be a contiguous float32 NCHW tensor");
  TORCH_CHECK(!weights.empty() && weights.size() == row_in.size() &&
                  weights.size() == k_off.size() && weights.size() == row_out.size() &&
                  weights.size() == col_out.size() && weights.size() == src.size() &&
                  weights.size() == dst.size(),
              "tt_conv2d: one weight, four offset tables, a source and a destination per step");
  for (size_t i = 0; i < weights.size(); ++i)
    TORCH_CHECK(src[i] >= 0 && src[i] <= nbuf && dst[i] >= 1 && dst[i] <= nbuf,
                "tt_conv2d: step buffers out of range");
  TORCH_CHECK(out_buf >= 1 && out_buf <= nbuf, "tt_conv2d: output buffer out of range");
  const int64_t B = x.size(0), I = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t T = tile_in.size(0), taps = tile_in.size(1), r0 = spatial.size(1);
  auto y = torch::empty({B, O, P, Q}, x.options());
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const float* G = spatial.data_ptr<float>();
  const int64_t* tin = tile_in.data_ptr<int64_t>();
  const int32_t* tm = tile_mask.data_ptr<int32_t>();
  const int64_t* tout = tile_out.data_ptr<int64_t>();
  const int32_t* tom = tile_omask.data_ptr<int32_t>();
  const float* bs = bias.numel() ? bias.data_ptr<float>() : nullptr;
  std::vector<Step> steps;
  for (size_t i = 0; i < weights.size(); ++i)
    steps.push_back({weights[i].data_ptr<float>(), weights[i].size(0), weights[i].size(1),
                     row_in[i].size(0), row_in[i].data_ptr<int32_t>(),
                     k_off[i].data_ptr<int32_t>(), row_out[i].data_ptr<int32_t>(),
                     col_out[i].data_ptr<int32_t>(), src[i], dst[i]});
  at::parallel_for(0, B * T, 1, [&](int64_t lo, int64_t hi) {
    // Zero-filled once: the padded input modes (i >= I) of z are never written.
    std::vector<float> storage((zsize + nbuf * bufsize) * 16 + 16, 0.f);
    float* z = align64(storage.data());
    std::vector<float*> buf(nbuf + 1, z);
    for (int64_t k = 1; k <= nbuf; ++k) buf[k] = z + (zsize + (k - 1) * bufsize) * 16;
    for (int64_t bt = lo; bt < hi; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      const float* xb = X + b * I * HW;
      const int64_t* base = tin + t * taps;
      const int32_t* mask = tm + t * taps;
      for (int64_t i = 0; i < I; ++i)
        for (int64_t a0 = 0; a0 < r0; a0 += 8)
          spatial_any(std::min<int64_t>(8, r0 - a0), xb + i * HW, base, mask, taps, G + a0, r0,
                      z + (i * r0 + a0) * 16);
      for (const Step& s : steps) run_step(s, buf[s.src], buf[s.dst]);
      const float* in = buf[out_buf];
      const __mmask16 om = static_cast<__mmask16>(tom[t]);
      float* yb = Y + b * O * P * Q + tout[t];
      for (int64_t o = 0; o < O; ++o) {
        __m512 v = _mm512_load_ps(in + o * 16);
        if (bs) v = _mm512_add_ps(v, _mm512_set1_ps(bs[o]));
        _mm512_mask_storeu_ps(yb + o * P * Q, om, v);
      }
    }
  });
  return y;
}
