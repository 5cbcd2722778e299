// A static int8 convolution with few input values per output (C x kh x kw small: a network's
// first layer, on one or three channels), stride 1, in both native builds. oneDNN's int8
// convolution is slow there: LeNet-5's conv1 (1 -> 20 channels, 5 x 5, batch 64) took 0.53 ms
// on a Zen 4 core with VNNI (as long as with 32 output channels) and 1.06 ms under its AVX2
// code, against 0.67 ms for the fp32 conv. Here the lanes of a vector are 16 (AVX-512) or 8
// (AVX2) neighbouring output pixels of one row, so the input is read straight from the image,
// with no im2col: per image, each padded input row is expanded once into 32-bit words of 4 (or
// 2) consecutive codes, and the word at column w + span t holds taps span t.. of output pixel w.
// One load of such words feeds 8 output channels' accumulators, each weight word broadcast:
//  * VPDPBUSD (u8 x s8, four products per lane) where the CPU has AVX-512 VNNI;
//  * VPMADDUBSW + VPMADDWD (four products) where the image's codes fit 7 bits (the reduced range
//    modelzip quantizes to on CPUs without VNNI): pairs of products then fit int16 exactly;
//  * VPMADDWD on 16-bit pairs (two products) otherwise, exact for any 8-bit input.
// Output codes are requantized in float as PyTorch's engines do, round((acc - zin sum w) m + b),
// clamped to [lo, 255], transposed in registers and written channels-last (N, OH, OW, Cout), the
// layout the next int8 conv reads (written NCHW, the whole LeNet-5 ran 0.1 ms slower for the
// reorders downstream). A first attempt with pixels in rows and channels in lanes (an im2col
// per pixel) ran 0.93 ms: the gathers and per-pixel requantization cost more than the products.
// Written by hand: no library has a first-layer int8 convolution that PyTorch can call.
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
using IVec = __m512i;
constexpr int kPix = 16;
#else
using IVec = __m256i;
constexpr int kPix = 8;
#endif
constexpr int kChanBlock = 8;  // output channels per pass over the input words

struct SmallConv {
  int64_t C, H, W, kh, kw, ph, pw, OH, OW, cout;
  int64_t span;  // codes per word: 4 or 2
  int64_t taps;  // weight words per kernel row: ceil(kw / span)
  int64_t Wq;    // words per expanded row (OW rounded up to kPix, + the taps' reach)
  int64_t Hp;    // padded rows
};

// The input: uint8 codes, or float values quantized here as PyTorch's quantize_per_tensor does
// (round half to even of x * mul + add, plus the zero point, clamped to [0, qmax]) while a row is
// expanded: one pass over the image instead of PyTorch's quantize and the copy of its codes out
// of the quantized tensor (0.04 ms of LeNet-5's 2.7 at batch 64, one AVX2 core).
struct InputRows {
  const uint8_t* codes;
  const float* values;
  float mul, add;
  int zin, qmax;
  int64_t C, H, W;

  void row(int64_t n, int64_t c, int64_t ih, uint8_t* p) const {
    const int64_t at = ((n * C + c) * H + ih) * W;
    if (codes != nullptr) {
      std::memcpy(p, codes + at, W);
      return;
    }
    const float* v = values + at;
    int64_t i = 0;
    // Past int32, cvtps gives INT32_MIN: values are clipped below it first, as fbgemm does.
    constexpr float kTop = 2147483520.0f;
    const __m256 m = _mm256_set1_ps(mul), a = _mm256_set1_ps(add), top_f = _mm256_set1_ps(kTop);
    const __m256i z = _mm256_set1_epi32(zin), top = _mm256_set1_epi32(qmax);
    for (; i + 8 <= W; i += 8) {  // cvtps rounds half to even (MXCSR's default), as nearbyint
      const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), m), a);
      __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(top_f, t));  // NaN stays NaN: 0
      q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, z), _mm256_setzero_si256()), top);
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(p + i), _mm_packus_epi16(w, w));
    }
    for (; i < W; ++i) {
      const float t = std::nearbyint(std::min(v[i] * mul + add, kTop));
      const int q = t >= -kTop ? static_cast<int>(t) + zin : 0;  // NaN: 0, as cvtps gives
      p[i] = static_cast<uint8_t>(std::min(std::max(q, 0), qmax));
    }
  }
};

// Words of image n: Q[(c * Hp + r) * Wq + w] = codes of padded row r, columns w .. w + span - 1
// (as bytes, span 4, or 16-bit halves, span 2); outside the image the input's zero point.
inline void expand_rows(const InputRows& x, const SmallConv& g, int64_t n, uint8_t zin,
                        std::vector<uint8_t>& padded, uint32_t* Q) {
  padded.resize(static_cast<size_t>(g.Wq + 4));
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t r = 0; r < g.Hp; ++r) {
      const int64_t ih = r - g.ph;
      std::fill(padded.begin(), padded.end(), zin);
      if (ih >= 0 && ih < g.H) x.row(n, c, ih, padded.data() + g.pw);
      uint32_t* q = Q + (c * g.Hp + r) * g.Wq;
      const uint8_t* p = padded.data();
      if (g.span == 4) {
        for (int64_t w = 0; w < g.Wq; ++w) std::memcpy(q + w, p + w, 4);
      } else {
        for (int64_t w = 0; w < g.Wq; ++w) q[w] = p[w] | (static_cast<uint32_t>(p[w + 1]) << 16);
      }
    }
  }
}

// 16 (or 8) int32 pixel values of one channel, requantized into bytes (the low kPix of the
// register).
#if defined(__AVX512F__)
inline IVec dot_pair(IVec acc, IVec a, int32_t w) {
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, _mm512_set1_epi32(w)));
}
inline IVec dot_quad7(IVec acc, IVec a, int32_t w) {
  const IVec p = _mm512_maddubs_epi16(a, _mm512_set1_epi32(w));
  return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}
inline IVec load_words(const uint32_t* q) {
  return _mm512_loadu_si512(static_cast<const void*>(q));
}
inline IVec zero_vec() { return _mm512_setzero_si512(); }
inline __m128i requant(IVec acc, int32_t corr, float mult, float off, int lo) {
  const __m512 f = _mm512_fmadd_ps(
      _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(corr))), _mm512_set1_ps(mult),
      _mm512_set1_ps(off));
  __m512i q = _mm512_cvtps_epi32(f);  // round to nearest even (MXCSR's default)
  q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(lo)), _mm512_set1_epi32(255));
  return _mm512_cvtepi32_epi8(q);
}
#else
inline IVec dot_pair(IVec acc, IVec a, int32_t w) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, _mm256_set1_epi32(w)));
}
inline IVec dot_quad7(IVec acc, IVec a, int32_t w) {
  const IVec p = _mm256_maddubs_epi16(a, _mm256_set1_epi32(w));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
inline IVec load_words(const uint32_t* q) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
}
inline IVec zero_vec() { return _mm256_setzero_si256(); }
inline __m128i requant(IVec acc, int32_t corr, float mult, float off, int lo) {
  const __m256 f = _mm256_fmadd_ps(
      _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_set1_epi32(corr))), _mm256_set1_ps(mult),
      _mm256_set1_ps(off));
  __m256i q = _mm256_cvtps_epi32(f);
  q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(lo)), _mm256_set1_epi32(255));
  const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(q, q), q);  // bytes 0-3 per lane
  return _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}
#endif

// Channels co0 .. co0 + 7 of pixels ow0 .. ow0 + valid - 1 of an output row (NHWC, at `out`,
// its pixel ow0): the 8 x 16 bytes transposed by unpacking (bytes, words, dwords), then each
// pixel's channels stored together.
inline void store_nhwc(const __m128i* r, int64_t valid, int64_t nch, int64_t cout, uint8_t* out) {
  const __m128i t0 = _mm_unpacklo_epi8(r[0], r[1]), t1 = _mm_unpackhi_epi8(r[0], r[1]);
  const __m128i t2 = _mm_unpacklo_epi8(r[2], r[3]), t3 = _mm_unpackhi_epi8(r[2], r[3]);
  const __m128i t4 = _mm_unpacklo_epi8(r[4], r[5]), t5 = _mm_unpackhi_epi8(r[4], r[5]);
  const __m128i t6 = _mm_unpacklo_epi8(r[6], r[7]), t7 = _mm_unpackhi_epi8(r[6], r[7]);
  const __m128i u[4] = {_mm_unpacklo_epi16(t0, t2), _mm_unpackhi_epi16(t0, t2),
                        _mm_unpacklo_epi16(t1, t3), _mm_unpackhi_epi16(t1, t3)};
  const __m128i v[4] = {_mm_unpacklo_epi16(t4, t6), _mm_unpackhi_epi16(t4, t6),
                        _mm_unpacklo_epi16(t5, t7), _mm_unpackhi_epi16(t5, t7)};
  alignas(16) uint8_t tile[16][8];  // pixel, channel
  for (int k = 0; k < 4; ++k) {
    _mm_store_si128(reinterpret_cast<__m128i*>(tile[4 * k]), _mm_unpacklo_epi32(u[k], v[k]));
    _mm_store_si128(reinterpret_cast<__m128i*>(tile[4 * k + 2]), _mm_unpackhi_epi32(u[k], v[k]));
  }
  if (nch == 8) {
    for (int64_t p = 0; p < valid; ++p) std::memcpy(out + p * cout, tile[p], 8);
  } else {
    for (int64_t p = 0; p < valid; ++p)
      for (int64_t b = 0; b < nch; ++b) out[p * cout + b] = tile[p][b];
  }
}

// Output row oh of one image, in blocks of kPix pixels x kChanBlock channels: Wt[((co / 8) *
// per_co + (c * kh + i) * taps + t) * 8 + co % 8] is the weight word of kernel row i's taps
// span t ... (a block's 8 words side by side: one base register for the 8 broadcasts). The same loop
// three times, one per product; the VNNI one carries its own target (the build does not assume
// VNNI, and inlining across targets fails), the others must not (where the target allows it GCC
// may fuse VPMADDWD + VPADDD into the VNNI VPDPWSSD, on a CPU without it). A whole row per call:
// per block, a call cost as much as its 80 products.
// One block: CB (8, or 4 for a last block of at most 4 channels: LeNet-5's 20 = 8 + 8 + 4)
// accumulators for kPix pixels.
#define MODELZIP_SMALL_CONV_BLOCK(DOT, CB)                                                  \
  {                                                                                         \
    IVec sum[CB];                                                                           \
    for (int b = 0; b < CB; ++b) sum[b] = zero_vec();                                       \
    for (int64_t c = 0; c < g.C; ++c) {                                                     \
      for (int64_t i = 0; i < g.kh; ++i) {                                                  \
        const uint32_t* q = Q + (c * g.Hp + oh + i) * g.Wq + ow0;                           \
        const int32_t* w = Wt + (co0 * per_co + (c * g.kh + i) * g.taps * kChanBlock);      \
        for (int64_t t = 0; t < g.taps; ++t) {                                              \
          const IVec a = load_words(q + t * g.span);                                        \
          for (int b = 0; b < CB; ++b) sum[b] = DOT(sum[b], a, w[t * kChanBlock + b]);      \
        }                                                                                   \
      }                                                                                     \
    }                                                                                       \
    __m128i bytes[kChanBlock];                                                              \
    for (int b = 0; b < kChanBlock; ++b) {                                                  \
      const int64_t co = std::min<int64_t>(co0 + b, g.cout - 1);                            \
      bytes[b] = b < CB ? requant(sum[b < CB ? b : 0], corr[co], mult[co], off[co], lo)     \
                        : _mm_setzero_si128();                                              \
    }                                                                                       \
    store_nhwc(bytes, std::min<int64_t>(kPix, g.OW - ow0), nch, g.cout,                     \
               out_row + ow0 * g.cout + co0);                                               \
  }

#define MODELZIP_SMALL_CONV_ROW(DOT)                                                        \
  const int64_t per_co = g.C * g.kh * g.taps;                                               \
  uint8_t* out_row = out_img + oh * g.OW * g.cout;                                          \
  for (int64_t co0 = 0; co0 < g.cout; co0 += kChanBlock) {                                  \
    const int64_t nch = std::min<int64_t>(kChanBlock, g.cout - co0);                        \
    for (int64_t ow0 = 0; ow0 < g.OW; ow0 += kPix) {                                        \
      if (nch > 4)                                                                          \
        MODELZIP_SMALL_CONV_BLOCK(DOT, kChanBlock)                                          \
      else                                                                                  \
        MODELZIP_SMALL_CONV_BLOCK(DOT, 4)                                                   \
    }                                                                                       \
  }

#define MODELZIP_SMALL_CONV_ARGS                                                         \
  const uint32_t *Q, const int32_t *Wt, const SmallConv &g, int64_t oh, const int32_t *corr, \
      const float *mult, const float *off, int lo, uint8_t *out_img

#if defined(__AVX512F__)
__attribute__((target("avx512vnni"))) inline IVec dot_vnni(IVec acc, IVec a, int32_t w) {
  return _mm512_dpbusd_epi32(acc, a, _mm512_set1_epi32(w));
}
__attribute__((target("avx512vnni"))) void row_vnni(MODELZIP_SMALL_CONV_ARGS) {
  MODELZIP_SMALL_CONV_ROW(dot_vnni)
}
#endif
void row_quad7(MODELZIP_SMALL_CONV_ARGS) { MODELZIP_SMALL_CONV_ROW(dot_quad7) }
void row_pairs(MODELZIP_SMALL_CONV_ARGS) { MODELZIP_SMALL_CONV_ROW(dot_pair) }
#undef MODELZIP_SMALL_CONV_ROW
#undef MODELZIP_SMALL_CONV_BLOCK
#undef MODELZIP_SMALL_CONV_ARGS

// Weight words of span 4 (int8 codes) or 2 (int16), zero past kw and past Cout (rounded up to
// a block of channels), in blocks of 8 channels (the layout above).
std::vector<int32_t> weight_words(const int8_t* K, const SmallConv& g) {
  const int64_t per_co = g.C * g.kh * g.taps;
  const int64_t cp = (g.cout + kChanBlock - 1) / kChanBlock * kChanBlock;
  std::vector<int32_t> Wt(static_cast<size_t>(cp * per_co), 0);
  for (int64_t co = 0; co < g.cout; ++co)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          const int8_t v = K[((co * g.C + c) * g.kh + i) * g.kw + j];
          const int64_t k = (c * g.kh + i) * g.taps + j / g.span;
          auto& word = reinterpret_cast<uint32_t&>(
              Wt[((co / kChanBlock) * per_co + k) * kChanBlock + co % kChanBlock]);
          const uint32_t bits = g.span == 4 ? static_cast<uint8_t>(v) : static_cast<uint16_t>(v);
          word |= bits << (static_cast<int>(j % g.span) * (32 / g.span));
        }
  return Wt;
}

}  // namespace

namespace MODELZIP_ISA {

// x: (N, C, H, W) contiguous, uint8 or quint8 codes, or float32 values quantized on the way in
// (mul, add, qmax: see InputRows; zin is the zero point either way); codes: (Cout, C, kh, kw)
// int8; corr (Cout) int32 = zin * sum of the channel's codes; mult, off (Cout) float; pad:
// (ph, pw); stride 1, dilation 1. Output: a quint8 tensor (N, Cout, OH, OW) on (out_scale,
// out_zero), channels-last (the codes NHWC in memory), clamped below at lo. path: 0 the fastest
// exact product, 1 the 7-bit quads where the codes allow, 2 the 16-bit pairs (what CPUs without
// VNNI compute; for the tests).
torch::Tensor int8_conv_small_k(torch::Tensor x, torch::Tensor codes, torch::Tensor corr,
                                torch::Tensor mult, torch::Tensor off, int64_t ph, int64_t pw,
                                int64_t zin, int64_t lo, int64_t path, double in_mul,
                                double in_add, int64_t qmax, double out_scale, int64_t out_zero) {
  const auto kind = x.scalar_type();
  const bool floats = kind == torch::kFloat32;
  TORCH_CHECK((floats || kind == torch::kUInt8 || kind == torch::kQUInt8) && x.is_contiguous() &&
                  x.dim() == 4,
              "int8_conv_small_k: x must be contiguous float32, uint8 or quint8 (N, C, H, W)");
  TORCH_CHECK(codes.scalar_type() == torch::kInt8 && codes.is_contiguous() && codes.dim() == 4 &&
                  codes.size(1) == x.size(1),
              "int8_conv_small_k: codes must be contiguous int8 (Cout, C, kh, kw)");
  TORCH_CHECK(zin >= 0 && zin <= 255 && lo >= 0 && lo <= 255 && out_zero >= 0 &&
                  out_zero <= 255 && qmax >= zin && qmax <= 255,
              "int8_conv_small_k: bad zero point or top code");
#if defined(__AVX512F__)
  const bool vnni = path == 0 && __builtin_cpu_supports("avx512vnni");
#else
  const bool vnni = false;
#endif
  SmallConv g{};
  g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.kh = codes.size(2), g.kw = codes.size(3), g.ph = ph, g.pw = pw;
  g.OH = g.H + 2 * ph - g.kh + 1, g.OW = g.W + 2 * pw - g.kw + 1;
  TORCH_CHECK(g.OH > 0 && g.OW > 0, "int8_conv_small_k: the kernel is larger than the input");
  g.cout = codes.size(0);
  g.Hp = g.H + 2 * ph;
  const int64_t N = x.size(0);
  const uint8_t* X = floats ? nullptr : static_cast<const uint8_t*>(x.data_ptr());
  const InputRows rows{X,
                       floats ? x.data_ptr<float>() : nullptr,
                       static_cast<float>(in_mul),
                       static_cast<float>(in_add),
                       static_cast<int>(zin),
                       static_cast<int>(qmax),
                       g.C,
                       g.H,
                       g.W};
  // The 7-bit quads need every code (and the padding's zero point) below 128.
  bool seven = path != 2 && !vnni && zin < 128;
  if (seven && floats) {
    seven = qmax < 128;
  } else if (seven) {
    uint8_t any = 0;
    for (int64_t i = 0; i < x.numel(); ++i) any |= X[i];
    seven = any < 128;
  }
  g.span = (vnni || seven) ? 4 : 2;
  g.taps = (g.kw + g.span - 1) / g.span;
  g.Wq = (g.OW + kPix - 1) / kPix * kPix + g.taps * g.span;
  const std::vector<int32_t> Wt = weight_words(codes.data_ptr<int8_t>(), g);
  // Written straight into the quantized tensor: wrapping a uint8 result into one afterwards
  // (_make_per_tensor_quantized_tensor) copies it element by element, 0.33 ms for LeNet-5's
  // conv1 at batch 64, longer than the conv.
  auto y = at::_empty_affine_quantized({N, g.cout, g.OH, g.OW},
                                       at::device(at::kCPU).dtype(at::kQUInt8), out_scale,
                                       out_zero, at::MemoryFormat::ChannelsLast);
  uint8_t* Y = static_cast<uint8_t*>(y.data_ptr());
  const int32_t* CR = corr.data_ptr<int32_t>();
  const float* MU = mult.data_ptr<float>();
  const float* OF = off.data_ptr<float>();
  const int lower = static_cast<int>(lo);
  at::parallel_for(0, N, 1, [&, g](int64_t n0, int64_t n1) {
    std::vector<uint32_t> Q(static_cast<size_t>(g.C * g.Hp * g.Wq + kPix));
    std::vector<uint8_t> padded;
    for (int64_t n = n0; n < n1; ++n) {
      expand_rows(rows, g, n, static_cast<uint8_t>(zin), padded, Q.data());
      uint8_t* out_img = Y + n * g.OH * g.OW * g.cout;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
#if defined(__AVX512F__)
        if (vnni) {
          row_vnni(Q.data(), Wt.data(), g, oh, CR, MU, OF, lower, out_img);
          continue;
        }
#endif
        if (seven)
          row_quad7(Q.data(), Wt.data(), g, oh, CR, MU, OF, lower, out_img);
        else
          row_pairs(Q.data(), Wt.data(), g, oh, CR, MU, OF, lower, out_img);
      }
    }
  });
  return y;
}

}  // namespace MODELZIP_ISA
