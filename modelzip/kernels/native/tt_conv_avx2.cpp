// AVX2 + FMA version of tt_conv.cpp (the fused TT-conv forward, whose ISA-neutral part,
// tt_conv_driver.h, it shares), for CPUs without AVX-512.
//
// The data layout is tt_conv.cpp's, so the Python side (tiles of 16 output pixels, offset
// tables in 16-float vectors) is shared: each 16-pixel vector is two ymm halves of 8 pixels, and
// every register tile runs once per half. With 16 ymm registers (AVX-512: 32 zmm) and no
// broadcast folded into the FMA, the step tile is 3 rows x 4 columns: 12 accumulators, 3 row
// loads and 1 broadcast per column. Lane masks (16 bits per tap) become VMASKMOVPS masks, whose
// masked-off lanes are not accessed (the padding's out-of-range addresses are never read).
#include <immintrin.h>

#include "tt_conv_driver.h"

namespace {

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

void run_step(const Step& s, const float* in, float* out) { run_tiled<3, 4>(s, in, out); }

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

// The 16 lanes of a 16-bit mask as int32 (-1 where set): VMASKMOVPS reads their sign bits.
void expand_mask(int32_t bits, int32_t* lanes) {
  for (int l = 0; l < 16; ++l) lanes[l] = (bits >> l) & 1 ? -1 : 0;
}

const int32_t* tile_lanes(const int32_t* masks, int64_t taps, int32_t* scratch) {
  for (int64_t tp = 0; tp < taps; ++tp) expand_mask(masks[tp], scratch + tp * 16);
  return scratch;
}

void store_channels(const float* in, int32_t omask, const float* bias, int64_t O, int64_t plane,
                    float* y) {
  int32_t olanes[16];
  expand_mask(omask, olanes);
  const __m256i om0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(olanes));
  const __m256i om1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(olanes + 8));
  for (int64_t o = 0; o < O; ++o) {
    __m256 v0 = _mm256_load_ps(in + o * 16), v1 = _mm256_load_ps(in + o * 16 + 8);
    if (bias) {
      const __m256 bo = _mm256_broadcast_ss(bias + o);
      v0 = _mm256_add_ps(v0, bo);
      v1 = _mm256_add_ps(v1, bo);
    }
    _mm256_maskstore_ps(y + o * plane, om0, v0);
    _mm256_maskstore_ps(y + o * plane + 8, om1, v1);
  }
}

}  // namespace
