// AVX2 + FMA version of tt_conv.cpp (the fused TT-conv forward), for CPUs without AVX-512.
//
// The data layout is tt_conv.cpp's, so the Python side (tiles of 16 output pixels, offset
// tables in 16-float vectors) is shared: each 16-pixel vector is two ymm halves of 8 pixels, and
// every register tile runs once per half. With 16 ymm registers (AVX-512: 32 zmm) and no
// broadcast folded into the FMA, the step tile is 3 rows x 4 columns: 12 accumulators, 3 row
// loads and 1 broadcast per column. Lane masks (16 bits per tap) become VMASKMOVPS masks, whose
// masked-off lanes are not accessed (the padding's out-of-range addresses are never read).
#include "tt_conv_avx2.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

struct Step {
  const float* w;  // K x N, row-major
  int64_t K, N, M;
  const int32_t* row_in;   // M: input offset of row m (in 16-float vectors)
  const int32_t* k_off;    // K: input offset of contracted index k
  const int32_t* row_out;  // M: output offset of row m
  const int32_t* col_out;  // N: output offset of column n
  int64_t src, dst;        // buffers: 0 = the spatial result z, 1.. = step results
};

template <int R, int C>
inline void block(const Step& s, const float* in, float* out, int64_t m0, int64_t n0) {
  const float* p[R];
  for (int r = 0; r < R; ++r) p[r] = in + static_cast<int64_t>(s.row_in[m0 + r]) * 16;
  const float* w = s.w + n0;
  for (int h = 0; h < 16; h += 8) {
    __m256 acc[R][C];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < s.K; ++k) {
      const int64_t ko = static_cast<int64_t>(s.k_off[k]) * 16 + h;
      __m256 v[R];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) v[r] = _mm256_loadu_ps(p[r] + ko);
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) {
        const __m256 b = _mm256_broadcast_ss(w + k * s.N + c);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(v[r], b, acc[r][c]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c)
        _mm256_storeu_ps(
            out + (static_cast<int64_t>(s.row_out[m0 + r]) + s.col_out[n0 + c]) * 16 + h,
            acc[r][c]);
  }
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

void run_step(const Step& s, const float* in, float* out) { run_tiled<3, 4>(s, in, out); }

// z[a] (NA filters, a 16-pixel vector each) for one input channel plane xi; lanes holds each
// tap's 16 lane masks as int32 (-1 or 0). NA is a template parameter so that the accumulators
// stay in registers.
template <int NA>
inline void spatial_filters(const float* xi, const int64_t* base, const int32_t* lanes,
                            int64_t taps, const float* G, int64_t r0, float* z) {
  for (int h = 0; h < 16; h += 8) {
    __m256 acc[NA];
    for (int a = 0; a < NA; ++a) acc[a] = _mm256_setzero_ps();
    for (int64_t tp = 0; tp < taps; ++tp) {
      const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + tp * 16 + h));
      const __m256 v = _mm256_maskload_ps(xi + base[tp] + h, m);
      const float* g = G + tp * r0;
      for (int a = 0; a < NA; ++a) acc[a] = _mm256_fmadd_ps(v, _mm256_broadcast_ss(g + a), acc[a]);
    }
    for (int a = 0; a < NA; ++a) _mm256_store_ps(z + a * 16 + h, acc[a]);
  }
}

void spatial_any(int64_t na, const float* xi, const int64_t* base, const int32_t* lanes,
                 int64_t taps, const float* G, int64_t r0, float* z) {
  switch (na) {
    case 1: return spatial_filters<1>(xi, base, lanes, taps, G, r0, z);
    case 2: return spatial_filters<2>(xi, base, lanes, taps, G, r0, z);
    case 3: return spatial_filters<3>(xi, base, lanes, taps, G, r0, z);
    case 4: return spatial_filters<4>(xi, base, lanes, taps, G, r0, z);
    case 5: return spatial_filters<5>(xi, base, lanes, taps, G, r0, z);
    case 6: return spatial_filters<6>(xi, base, lanes, taps, G, r0, z);
    case 7: return spatial_filters<7>(xi, base, lanes, taps, G, r0, z);
    default: return spatial_filters<8>(xi, base, lanes, taps, G, r0, z);
  }
}

// The 16 lanes of a 16-bit mask as int32 (-1 where set): VMASKMOVPS reads their sign bits.
void expand_mask(int32_t bits, int32_t* lanes) {
  for (int l = 0; l < 16; ++l) lanes[l] = (bits >> l) & 1 ? -1 : 0;
}

float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

}  // namespace

namespace modelzip_avx2 {

// Arguments as tt_conv.cpp's tt_conv2d.
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
    std::vector<int32_t> lanes(taps * 16 + 16);  // each tap's lane masks, one tile at a time
    int32_t olanes[16];
    for (int64_t bt = lo; bt < hi; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      const float* xb = X + b * I * HW;
      const int64_t* base = tin + t * taps;
      for (int64_t tp = 0; tp < taps; ++tp) expand_mask(tm[t * taps + tp], lanes.data() + tp * 16);
      for (int64_t i = 0; i < I; ++i)
        for (int64_t a0 = 0; a0 < r0; a0 += 8)
          spatial_any(std::min<int64_t>(8, r0 - a0), xb + i * HW, base, lanes.data(), taps,
                      G + a0, r0, z + (i * r0 + a0) * 16);
      for (const Step& s : steps) run_step(s, buf[s.src], buf[s.dst]);
      const float* in = buf[out_buf];
      expand_mask(tom[t], olanes);
      const __m256i om0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(olanes));
      const __m256i om1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(olanes + 8));
      float* yb = Y + b * O * P * Q + tout[t];
      for (int64_t o = 0; o < O; ++o) {
        __m256 v0 = _mm256_load_ps(in + o * 16), v1 = _mm256_load_ps(in + o * 16 + 8);
        if (bs) {
          const __m256 bo = _mm256_broadcast_ss(bs + o);
          v0 = _mm256_add_ps(v0, bo);
          v1 = _mm256_add_ps(v1, bo);
        }
        _mm256_maskstore_ps(yb + o * P * Q, om0, v0);
        _mm256_maskstore_ps(yb + o * P * Q + 8, om1, v1);
      }
    }
  });
  return y;
}

}  // namespace modelzip_avx2
