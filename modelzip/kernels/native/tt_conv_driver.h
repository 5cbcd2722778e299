// The ISA-neutral part of the fused TT-conv (see tt_conv.cpp's header): the steps' offset
// tables, the register tiling of a step, the dispatch of the spatial filters and the loop over
// (image, tile) that calls them. Included once by each ISA's source (tt_conv.cpp for AVX-512,
// tt_conv_avx2.cpp for AVX2 + FMA), which defines the functions declared below without a body:
// its register tile (block), the tiles a step runs (run_step), the spatial filters, the
// expansion of a tile's lane masks and the store of the output channels.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tt_conv.h"

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

// out[m0.., n0..] for an R x C register tile of 16-pixel accumulators.
template <int R, int C>
inline void block(const Step& s, const float* in, float* out, int64_t m0, int64_t n0);

// One step: out[m, n] = sum_k in[m, k] * W[k, n], by register tiles (run_tiled's).
void run_step(const Step& s, const float* in, float* out);

// z[a] (NA filters, a 16-pixel vector each) for one input channel plane xi; mask holds each
// tap's lane mask as tile_lanes gives it. NA is a template parameter so that the accumulators
// stay in registers (a runtime count spills them: 4x slower).
template <int NA>
inline void spatial_filters(const float* xi, const int64_t* base, const int32_t* mask,
                            int64_t taps, const float* G, int64_t r0, float* z);

// A tile's lane masks (16 bits per tap) in the form spatial_filters reads; scratch holds
// 16 x taps + 16 int32.
const int32_t* tile_lanes(const int32_t* masks, int64_t taps, int32_t* scratch);

// y[o * plane + lane] = in[o][lane] (+ bias[o]) for the output channels o < O, on the lanes of
// omask.
void store_channels(const float* in, int32_t omask, const float* bias, int64_t O, int64_t plane,
                    float* y);

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
torch::Tensor MODELZIP_ISA::tt_conv2d(torch::Tensor x, torch::Tensor spatial,
                                     torch::Tensor tile_in, torch::Tensor tile_mask,
                                     torch::Tensor tile_out, torch::Tensor tile_omask,
                                     std::vector<torch::Tensor> weights,
                                     std::vector<torch::Tensor> row_in,
                                     std::vector<torch::Tensor> k_off,
                                     std::vector<torch::Tensor> row_out,
                                     std::vector<torch::Tensor> col_out, std::vector<int64_t> src,
                                     std::vector<int64_t> dst, torch::Tensor bias, int64_t O,
                                     int64_t P, int64_t Q, int64_t zsize, int64_t bufsize,
                                     int64_t nbuf, int64_t out_buf) {
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
    std::vector<int32_t> scratch(taps * 16 + 16);
    for (int64_t bt = lo; bt < hi; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      const float* xb = X + b * I * HW;
      const int64_t* base = tin + t * taps;
      const int32_t* mask = tile_lanes(tm + t * taps, taps, scratch.data());
      for (int64_t i = 0; i < I; ++i)
        for (int64_t a0 = 0; a0 < r0; a0 += 8)
          spatial_any(std::min<int64_t>(8, r0 - a0), xb + i * HW, base, mask, taps, G + a0, r0,
                      z + (i * r0 + a0) * 16);
      for (const Step& s : steps) run_step(s, buf[s.src], buf[s.dst]);
      store_channels(buf[out_buf], tom[t], bs, O, P * Q, Y + b * O * P * Q + tout[t]);
    }
  });
  return y;
}
