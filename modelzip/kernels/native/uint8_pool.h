// 2x2 max pooling (stride 2) of a channels-last quint8 tensor, in both native builds: between two
// chained static int8 convs (modelzip/quantize/int8_chain.py) the codes are pooled as bytes
// (max commutes with the monotone map from codes to values, so the result is bit-identical to
// PyTorch's quantized_max_pool2d) and written straight into a new quantized tensor on the same
// grid. PyTorch's own kernel vectorizes over 32 channels and took 0.51-0.56 ms on 16 and 20
// channels (64 x 28 x 28 and 24 x 24, 2 threads, Zen 4; 0.74-0.82 on one); the two elementwise
// maxima of strided views that replaced it there took 0.18-0.20 ms on 2 threads, and 0.20 at
// 32 channels where PyTorch's took 0.13: threading a strided loop, and a result that
// torch._make_per_tensor_quantized_tensor copies element by element. Here each output row
// reads its two input rows once, C bytes per pixel at a time (a masked vector at the end):
// 0.04-0.05 ms on those three.
// Written by hand: no library pools uint8 codes in place.
#pragma once
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace {

// y[c] = max(p[c], p[C + c], q[c], q[C + c]) for c < C.
inline void max4_bytes(const uint8_t* p, const uint8_t* q, int64_t C, uint8_t* y) {
  int64_t c = 0;
#if defined(__AVX512BW__)
  for (; c < C; c += 64) {
    const int64_t left = C - c;
    const __mmask64 m = left >= 64 ? ~0ULL : ((1ULL << left) - 1);
    const __m512i a = _mm512_max_epu8(_mm512_maskz_loadu_epi8(m, p + c),
                                      _mm512_maskz_loadu_epi8(m, p + C + c));
    const __m512i b = _mm512_max_epu8(_mm512_maskz_loadu_epi8(m, q + c),
                                      _mm512_maskz_loadu_epi8(m, q + C + c));
    _mm512_mask_storeu_epi8(y + c, m, _mm512_max_epu8(a, b));
  }
#else
  for (; c + 32 <= C; c += 32) {
    auto ld = [](const uint8_t* s) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)); };
    const __m256i a = _mm256_max_epu8(ld(p + c), ld(p + C + c));
    const __m256i b = _mm256_max_epu8(ld(q + c), ld(q + C + c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + c), _mm256_max_epu8(a, b));
  }
  for (; c < C; ++c)
    y[c] = std::max(std::max(p[c], p[C + c]), std::max(q[c], q[C + c]));
#endif
}

}  // namespace

namespace MODELZIP_ISA {

// x: quint8 (N, C, H, W) in channels-last memory; the result likewise, (N, C, H / 2, W / 2).
torch::Tensor uint8_max_pool2x2(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kQUInt8 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "uint8_max_pool2x2: a channels-last quint8 4-D tensor");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = H / 2, OW = W / 2;
  auto out = at::_empty_affine_quantized({N, C, OH, OW}, x.options(), x.q_scale(),
                                         x.q_zero_point(), at::MemoryFormat::ChannelsLast);
  const auto* X = reinterpret_cast<const uint8_t*>(x.data_ptr<c10::quint8>());
  auto* Y = reinterpret_cast<uint8_t*>(out.data_ptr<c10::quint8>());
  // A second thread pays for itself past a few MB: woken from a passive wait it took longer
  // than the 1.6 MB of VGG's first pool take alone (88 us on 2 threads, 54 on one).
  const int64_t grain = std::max<int64_t>(1, (int64_t{4} << 20) / std::max<int64_t>(1, 2 * W * C));
  at::parallel_for(0, N * OH, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const uint8_t* a = X + (n * H + 2 * oh) * W * C;
      const uint8_t* b = a + W * C;
      uint8_t* y = Y + r * OW * C;
      for (int64_t ow = 0; ow < OW; ++ow) max4_bytes(a + 2 * ow * C, b + 2 * ow * C, C, y + ow * C);
    }
  });
  return out;
}

}  // namespace MODELZIP_ISA
