// Sign packing of real activations for the XNOR kernels, in both native builds (AVX2 is a
// subset of either): the bits of sign(x) (x < 0 -> 1, little-endian, as bitpack.py packs them)
// and XNOR-Net's mean |x|, eight values per compare + VMOVMSKPS instead of a branch or a shift
// per value. The Numba pass this replaces (binary.py's _sign_im2col_rows) took 0.49 ms of the
// wide LeNet-5's 0.92 ms binary conv at batch 64 on one AVX2 core. Written by hand: no library
// packs signs into the bit-stream im2col the XNOR GEMM reads.
#pragma once
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// Bits of sign(v) for the K values of one row into w (ceil(K/64) words, zeroed here); returns
// sum |v|. With Pool, v is the 2x2 max of four rows of K values (stride `ps` floats between
// horizontal and `pr` between vertical neighbours); with Clamp, |v| is min(|v|, 1) (a hardtanh
// before the layer: it keeps every sign and clips only the magnitudes).
template <bool Pool, bool Clamp>
inline float pack_signs_row(const float* x, int64_t K, int64_t ps, int64_t pr, uint64_t* w) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  // Each word is built in a register and stored once (or-ing into w[] made every 8 values
  // wait on the previous store).
  uint64_t cur = 0;
  __m256 acc = zero;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 v = _mm256_loadu_ps(x + k);
    if constexpr (Pool) {
      v = _mm256_max_ps(v, _mm256_loadu_ps(x + ps + k));
      v = _mm256_max_ps(v, _mm256_max_ps(_mm256_loadu_ps(x + pr + k),
                                         _mm256_loadu_ps(x + pr + ps + k)));
    }
    const uint64_t m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)));
    cur |= m << (k & 63);  // k is a multiple of 8: the 8 bits stay in one word
    if ((k & 63) == 56) {
      w[k >> 6] = cur;
      cur = 0;
    }
    __m256 a = _mm256_and_ps(v, absmask);
    if constexpr (Clamp) a = _mm256_min_ps(a, one);
    acc = _mm256_add_ps(acc, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; k < K; ++k) {
    float v = x[k];
    if constexpr (Pool) v = std::max(std::max(v, x[ps + k]), std::max(x[pr + k], x[pr + ps + k]));
    if (v < 0) cur |= uint64_t{1} << (k & 63);
    s += Clamp ? std::min(std::fabs(v), 1.0f) : std::fabs(v);
  }
  if (K & 63) w[K >> 6] = cur;
  return s;
}

// x (B, H, W, C) float32 contiguous (a channels-last image); with Pool the layer reads its 2x2
// max pool (stride 2: H/2 x W/2). Per image: every (pooled) pixel's sign bits into a
// zero-bordered grid (padding = bit 0 = +1) with its mean |x|; then per output position its
// taps' bits appended into one stream (ky, kx, c order) and the taps' box mean of |x| (K).
template <bool Pool, bool Clamp>
void sign_im2col_run(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const int64_t* g,
                     uint64_t* out, int64_t nw, float* scale) {
  const int64_t kh = g[0], kw = g[1], sh = g[2], sw = g[3], ph = g[4], pw = g[5], dh = g[6],
                dw = g[7], oh = g[8], ow = g[9];
  const int64_t h = Pool ? H / 2 : H, w = Pool ? W / 2 : W;
  const int64_t cw = (C + 63) / 64, gh = h + 2 * ph, gw = w + 2 * pw, ntaps = kh * kw;
  const float taps = static_cast<float>(ntaps), nc = static_cast<float>(C);
  std::vector<int64_t> tap_at(ntaps);  // each tap's offset in the pixel grid
  for (int64_t ky = 0; ky < kh; ++ky)
    for (int64_t kx = 0; kx < kw; ++kx) tap_at[ky * kw + kx] = ky * dh * gw + kx * dw;
  const int64_t* tap = tap_at.data();
  // Captured by value: the output's uint64 stores may alias int64 geometry read through a
  // reference, which made the compiler reload it for every tap.
  at::parallel_for(0, B, 1, [=](int64_t lo, int64_t hi) {
    std::vector<uint64_t> grid(gh * gw * cw);
    std::vector<float> amap_v(gh * gw);
    uint64_t* pix = grid.data();
    float* amap = amap_v.data();
    for (int64_t b = lo; b < hi; ++b) {
      std::fill(pix, pix + gh * gw * cw, 0);
      std::fill(amap, amap + gh * gw, 0.0f);
      const float* img = x + b * H * W * C;
      for (int64_t y = 0; y < h; ++y)
        for (int64_t z = 0; z < w; ++z) {
          const int64_t at = (y + ph) * gw + z + pw;
          const float* p = Pool ? img + (2 * y * W + 2 * z) * C : img + (y * W + z) * C;
          amap[at] = pack_signs_row<Pool, Clamp>(p, C, C, W * C, pix + at * cw) / nc;
        }
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t r = (b * oh + oy) * ow + ox, base = oy * sh * gw + ox * sw;
          uint64_t* row = out + r * nw;
          if (C % 32 == 0) {
            // Whole 32-bit units per tap: copied, no shifts (channels-last nets have C = 32k).
            const int64_t u = C / 32;
            auto* dst = reinterpret_cast<unsigned char*>(row);
            const auto* src = reinterpret_cast<const unsigned char*>(pix);
            for (int64_t t = 0; t < ntaps; ++t) {
              const unsigned char* from = src + 8 * (base + tap[t]) * cw;
              for (int64_t j = 0; j < u; ++j) {  // fixed-size copies: inlined as 32-bit moves
                uint32_t v;
                std::memcpy(&v, from + 4 * j, 4);
                std::memcpy(dst + 4 * (t * u + j), &v, 4);
              }
            }
            std::memset(dst + 4 * ntaps * u, 0, 8 * nw - 4 * ntaps * u);
          } else {
            // The row's words are built in a register and each stored once: or-ing the taps
            // into memory chained every tap on the previous store.
            uint64_t cur = 0;
            int64_t idx = 0, off = 0;
            for (int64_t t = 0; t < ntaps; ++t) {
              const int64_t at = base + tap[t];
              int64_t left = C;
              for (int64_t q = 0; q < cw; ++q) {
                const uint64_t v = pix[at * cw + q];  // its bits above n are 0
                const int64_t n = std::min<int64_t>(64, left);
                left -= n;
                cur |= v << off;
                if (off + n >= 64) {
                  row[idx++] = cur;
                  cur = off != 0 ? v >> (64 - off) : 0;
                  off = off + n - 64;
                } else {
                  off += n;
                }
              }
            }
            if (off != 0) row[idx++] = cur;
            for (; idx < nw; ++idx) row[idx] = 0;
          }
          if (scale != nullptr) {
            float box[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // four sums: no chain of float adds
            for (int64_t t = 0; t < ntaps; ++t) box[t & 3] += amap[base + tap[t]];
            scale[r] = ((box[0] + box[1]) + (box[2] + box[3])) / taps;  // K of +-1 is 1
          }
        }
    }
  });
}

}  // namespace

namespace MODELZIP_ISA {

// sign(x)'s packed im2col (see sign_im2col_run): geo = kh, kw, sh, sw, ph, pw, dh, dw, oh, ow
// (of the pooled image with pool = 2); words (B*oh*ow, nw) int64 and, with k_map, K (B*oh*ow).
std::tuple<torch::Tensor, torch::Tensor> sign_im2col(torch::Tensor x, torch::Tensor geo,
                                                     int64_t nw, int64_t pool, bool clamp,
                                                     bool k_map) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == torch::kFloat32,
              "sign_im2col: x must be a contiguous (B, H, W, C) float32 tensor");
  TORCH_CHECK(pool == 1 || pool == 2, "sign_im2col: pool must be 1 or 2");
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t* g = geo.data_ptr<int64_t>();
  const int64_t rows = B * g[8] * g[9];
  TORCH_CHECK(nw * 64 >= C * g[0] * g[1], "sign_im2col: too few words per row");
  auto out = torch::empty({rows, nw}, torch::kInt64);
  auto scale = torch::empty({k_map ? rows : 0}, torch::kFloat32);
  auto* o = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  float* s = k_map ? scale.data_ptr<float>() : nullptr;
  const float* p = x.data_ptr<float>();
  if (pool == 2)
    clamp ? sign_im2col_run<true, true>(p, B, H, W, C, g, o, nw, s)
          : sign_im2col_run<true, false>(p, B, H, W, C, g, o, nw, s);
  else
    clamp ? sign_im2col_run<false, true>(p, B, H, W, C, g, o, nw, s)
          : sign_im2col_run<false, false>(p, B, H, W, C, g, o, nw, s);
  return {out, scale};
}

// Rows of x (M, K) float32 contiguous: their sign bits (M, ceil(K/64)) int64 and, with
// abs_mean, the mean |x| of each row (XNOR-Net's beta), clipped at 1 with clamp.
std::tuple<torch::Tensor, torch::Tensor> sign_pack(torch::Tensor x, bool abs_mean, bool clamp) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat32,
              "sign_pack: x must be a contiguous (M, K) float32 tensor");
  const int64_t M = x.size(0), K = x.size(1), nw = (K + 63) / 64;
  auto out = torch::empty({M, nw}, torch::kInt64);
  auto mean = torch::empty({abs_mean ? M : 0}, torch::kFloat32);
  auto* o = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const float* p = x.data_ptr<float>();
  float* s = abs_mean ? mean.data_ptr<float>() : nullptr;
  const float nk = static_cast<float>(std::max<int64_t>(K, 1));
  at::parallel_for(0, M, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(K, 1)),
                   [&](int64_t lo, int64_t hi) {
                     for (int64_t i = lo; i < hi; ++i) {
                       const float t = clamp ? pack_signs_row<false, true>(p + i * K, K, 0, 0, o + i * nw)
                                             : pack_signs_row<false, false>(p + i * K, K, 0, 0, o + i * nw);
                       if (s != nullptr) s[i] = t / nk;
                     }
                   });
  return {out, mean};
}

}  // namespace MODELZIP_ISA
