// AVX2 + FMA versions of avx512.cpp's kernels, for x86 CPUs without AVX-512 VPOPCNTDQ (most
// laptops, AMD before Zen 4, Intel client parts). Built by modelzip/kernels/_native.py with
// -mavx2 -mfma -mpopcnt as a separate extension with the same Python interface; dispatch picks
// the AVX-512 build where the CPU has it. The operands' layouts are avx512.cpp's (B transposed
// and padded to 16 columns; BSR blocks row-major), so the Python side is shared.
//
// Only 16 ymm registers of 8 lanes (AVX-512: 32 zmm of 16), and no vector popcount:
//  * xnor: a 1 x 16 output tile (four ymm of four 64-bit words). Per group of 4 words,
//    Harley-Seal carry-save adders (Mula, Kurz and Lemire 2018) keep the ones and twos in
//    registers and count only the fours, by nibble lookup (VPSHUFB of a 16-entry table) into
//    byte counters that VPSADBW folds into 64-bit totals. B is first copied into panels of 16
//    columns (its rows are 8 KB apart at N = 1024: every word of a tile in one L1 set);
//  * bsr 4x4: a 4 x 24 output tile in 12 ymm float registers; per block, 12 X loads, 16
//    broadcasts and 48 FMAs. Column tails use VMASKMOVPS (masked-off lanes are not accessed).
// Threads: at::parallel_for (OpenMP) over row blocks (x column groups for the XNOR GEMM). The
// fused TT-conv is in tt_conv_avx2.cpp, the entry points and bindings in entry_points.h.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "entry_points.h"

namespace {

// Per byte: the number of set bits of each 8-bit lane of x.
inline __m256i popcount_bytes(__m256i x, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(x, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// Four int64 lanes (each fits int32) of lo and hi as eight int32: lo's in 0..3, hi's in 4..7.
inline __m256i narrow(__m256i lo, __m256i hi) {
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  return _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, even),
                            _mm256_permutevar8x32_epi32(hi, even), 0xF0);
}

// Lane mask for the first `valid` of 8 lanes (VMASKMOVPS reads the sign bits).
inline __m256i lane_mask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), idx);
}

// Carry-save adder: a + b + c bit by bit, as twos (h) and ones (l).
inline void csa(__m256i& h, __m256i& l, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  l = _mm256_xor_si256(u, c);
}

constexpr int kXQ = 4;            // ymm of 4 words per XNOR tile: 16 output columns
constexpr int kXCols = 4 * kXQ;   // = the column padding of the B operand
constexpr int64_t kXBlock = 16;   // rows per parallel unit, sharing each B panel in L1
constexpr int64_t kXGroup = 16;   // column tiles per parallel unit (256 columns)
constexpr int64_t kSteps = 31;    // 4-word steps per byte-counter run: 31 * 8 = 248 < 256
constexpr int64_t kPackRows = 8;  // from this many rows B is copied into panels first
constexpr int64_t kMinWork = 1 << 20;  // word pairs (or words copied) per thread, at least

// One output row i, columns j0 .. j0 + 15 (those below N stored). B: the tile's words, word w
// of column j0 + c at B[w * stride + c]. Per stream (4 columns), Harley-Seal over 4 words: three
// CSAs leave the ones and twos in registers and pass the fours to a nibble-lookup popcount into
// byte counters, folded by VPSADBW every kSteps steps: 6.5 ALU ops per 4 word pairs against 8
// for a lookup per word (xor, 2 and, shift, 2 shuffles, 2 adds).
template <bool Affine>
void xnor_tile(const uint64_t* a, int64_t W, const uint64_t* B, int64_t stride, int64_t i,
               int64_t j0, int64_t N, int64_t k, int32_t* C, float* Y, const float* corr,
               int64_t L, const float* alpha, const float* beta) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i zero = _mm256_setzero_si256();
  auto x = [&](int q, int64_t w) {  // a's word w XOR the four columns' words
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + w * stride + 4 * q));
    return _mm256_xor_si256(_mm256_set1_epi64x(static_cast<long long>(a[w])), b);
  };
  __m256i ones[kXQ], twos[kXQ], tot[kXQ];
  for (int q = 0; q < kXQ; ++q) ones[q] = twos[q] = tot[q] = zero;
  const int64_t W4 = W / 4 * 4;
  for (int64_t w = 0; w < W4;) {
    const int64_t end = std::min(W4, w + 4 * kSteps);
    __m256i fours[kXQ];
    for (int q = 0; q < kXQ; ++q) fours[q] = zero;
    for (; w < end; w += 4) {
      for (int q = 0; q < kXQ; ++q) {
        __m256i ta, tb, f;
        csa(ta, ones[q], ones[q], x(q, w), x(q, w + 1));
        csa(tb, ones[q], ones[q], x(q, w + 2), x(q, w + 3));
        csa(f, twos[q], twos[q], ta, tb);
        fours[q] = _mm256_add_epi8(fours[q], popcount_bytes(f, lut, low));
      }
    }
    for (int q = 0; q < kXQ; ++q)
      tot[q] = _mm256_add_epi64(tot[q], _mm256_slli_epi64(_mm256_sad_epu8(fours[q], zero), 2));
  }
  for (int q = 0; q < kXQ; ++q) {
    __m256i c = popcount_bytes(ones[q], lut, low);  // <= 8 per byte, and <= 3 words of 8 more
    for (int64_t w = W4; w < W; ++w) c = _mm256_add_epi8(c, popcount_bytes(x(q, w), lut, low));
    const __m256i t2 = _mm256_sad_epu8(popcount_bytes(twos[q], lut, low), zero);
    tot[q] = _mm256_add_epi64(tot[q], _mm256_add_epi64(_mm256_sad_epu8(c, zero),
                                                       _mm256_slli_epi64(t2, 1)));
  }
  const __m256i kk = _mm256_set1_epi32(static_cast<int>(k));
  for (int q = 0; q < kXQ; q += 2) {
    const int64_t j = j0 + 4 * q;
    if (j >= N) break;
    const __m256i m = lane_mask(std::min<int64_t>(8, N - j));
    // k - 2 * popcount as eight int32 (|k| < 2^31: the count fits).
    const __m256i t = _mm256_sub_epi32(kk, _mm256_slli_epi32(narrow(tot[q], tot[q + 1]), 1));
    if constexpr (Affine) {
      // (t - corr[i mod L, j]) * alpha[j] + beta[j], stored as float32.
      const __m256 c = _mm256_maskload_ps(corr + (i % L) * N + j, m);
      const __m256 al = _mm256_maskload_ps(alpha + j, m);
      const __m256 be = _mm256_maskload_ps(beta + j, m);
      _mm256_maskstore_ps(Y + i * N + j, m,
                          _mm256_fmadd_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(t), c), al, be));
    } else {
      _mm256_maskstore_epi32(reinterpret_cast<int*>(C + i * N + j), m, t);
    }
  }
}

template <bool Affine>
void xnor_run(const torch::Tensor& a, const torch::Tensor& bt, int64_t n, int64_t k,
              int32_t* C, float* Y, const float* corr, int64_t L, const float* alpha,
              const float* beta) {
  const int64_t M = a.size(0), W = a.size(1), Np = bt.size(1);
  const auto* A = reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>());
  const auto* Bt = reinterpret_cast<const uint64_t*>(bt.data_ptr<int64_t>());
  // Bt's rows are Np words apart: with Np a multiple of 512 every word of a tile falls in the
  // same L1 set, and the rows sharing the tile reread it from L2 (15% slower at 256 x 4096 x
  // 1024). With enough rows B is first copied into panels of kXCols columns, each contiguous.
  std::unique_ptr<uint64_t[]> panels;
  const bool packed = M >= kPackRows;
  if (packed) {
    panels.reset(new uint64_t[W * Np]);  // every word is written below
    const int64_t per = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, W * kXCols));
    at::parallel_for(0, Np / kXCols, per, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p)
        for (int64_t w = 0; w < W; ++w)
          std::copy_n(Bt + w * Np + p * kXCols, kXCols, panels.get() + (p * W + w) * kXCols);
    });
  }
  // Parallel units: blocks of kXBlock rows times groups of kXGroup column tiles; each thread
  // gets at least kMinWork word pairs (waking a thread costs more than a small product).
  const int64_t groups = (n + kXCols * kXGroup - 1) / (kXCols * kXGroup);
  const int64_t unit = std::min(M, kXBlock) * std::min<int64_t>(n, kXCols * kXGroup) * W;
  const int64_t grain = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, unit));
  at::parallel_for(0, (M + kXBlock - 1) / kXBlock * groups, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i0 = t / groups * kXBlock, i1 = std::min(M, i0 + kXBlock);
      const int64_t j1 = std::min(n, (t % groups + 1) * kXCols * kXGroup);
      for (int64_t j0 = t % groups * kXCols * kXGroup; j0 < j1; j0 += kXCols) {
        const uint64_t* B = packed ? panels.get() + j0 * W : Bt + j0;
        const int64_t stride = packed ? kXCols : Np;
        for (int64_t i = i0; i < i1; ++i)
          xnor_tile<Affine>(A + i * W, W, B, stride, i, j0, n, k, C, Y, corr, L, alpha, beta);
      }
    }
  });
}

// One block row's output columns n0 .. n0 + 8Q - 1 (Masked: only `cnt` of them exist).
template <int Q, bool Masked>
void bsr4_chunk(const int64_t* ip, const int64_t* ix, const float* B, const float* X, float* Y,
                int64_t n, int64_t br, int64_t n0, int64_t cnt) {
  __m256i m[Q];
  if constexpr (Masked)
    for (int q = 0; q < Q; ++q) m[q] = lane_mask(cnt - 8 * q);
  __m256 acc[4][Q];
  for (int r = 0; r < 4; ++r)
    for (int q = 0; q < Q; ++q) acc[r][q] = _mm256_setzero_ps();
  for (int64_t t = ip[br]; t < ip[br + 1]; ++t) {
    const float* b = B + t * 16;
    const float* xr = X + ix[t] * 4 * n + n0;
    for (int c = 0; c < 4; ++c) {
      __m256 xv[Q];
      for (int q = 0; q < Q; ++q) {
        if constexpr (Masked)
          xv[q] = _mm256_maskload_ps(xr + c * n + 8 * q, m[q]);
        else
          xv[q] = _mm256_loadu_ps(xr + c * n + 8 * q);
      }
      for (int r = 0; r < 4; ++r) {
        const __m256 v = _mm256_broadcast_ss(b + r * 4 + c);
        for (int q = 0; q < Q; ++q) acc[r][q] = _mm256_fmadd_ps(v, xv[q], acc[r][q]);
      }
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int q = 0; q < Q; ++q) {
      float* y = Y + (br * 4 + r) * n + n0 + 8 * q;
      if constexpr (Masked)
        _mm256_maskstore_ps(y, m[q], acc[r][q]);
      else
        _mm256_storeu_ps(y, acc[r][q]);
    }
}

constexpr int kBQ = 3;  // ymm per output row in a BSR tile: 4 x 24 outputs in 12 registers

// The last `left` (<= 8Q) columns, with as few ymm per row as hold them.
template <int Q>
void bsr4_tail(const int64_t* ip, const int64_t* ix, const float* B, const float* X, float* Y,
               int64_t n, int64_t br, int64_t n0, int64_t left) {
  if constexpr (Q > 1)
    if (left <= 8 * (Q - 1)) return bsr4_tail<Q - 1>(ip, ix, B, X, Y, n, br, n0, left);
  if (left == 8 * Q)
    bsr4_chunk<Q, false>(ip, ix, B, X, Y, n, br, n0, left);  // whole vectors: no masks
  else
    bsr4_chunk<Q, true>(ip, ix, B, X, Y, n, br, n0, left);
}

// Rows 4 br .. 4 br + 3: whole tiles of 8 kBQ columns, then the tail.
void bsr4_block_row(const int64_t* ip, const int64_t* ix, const float* B, const float* X,
                    float* Y, int64_t n, int64_t br) {
  constexpr int64_t width = 8 * kBQ;
  const int64_t whole = n / width * width;
  for (int64_t n0 = 0; n0 < whole; n0 += width)
    bsr4_chunk<kBQ, false>(ip, ix, B, X, Y, n, br, n0, width);
  if (whole < n) bsr4_tail<kBQ>(ip, ix, B, X, Y, n, br, whole, n - whole);
}

}  // namespace
