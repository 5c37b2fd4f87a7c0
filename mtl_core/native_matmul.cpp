// Small float matrix products in AVX-512 for the MLP step's second layer (native_steps.cpp; built by
// mtl_core/native.py into the same module): per column, relu(b2 + w2 x h) forward, w2^T x d and d x h^T
// backward, with w2 (32, 64) and h, d (64 or 32, batch).
//
// Why: at these sizes (about a million multiply-adds each) ATen's batched products run at a third of what
// the core can do: measured in C++ on one thread, batch 128, two columns, the three took 11.8, 11.5 and
// 11.9 us as at::baddbmm, at::bmm (w2^T x d) and at::bmm (d x h^T), and 4.2, 4.3 and 6.0 us here (the
// 4.3 on weights already transposed; matmul_tn adds that pass over 8 KB a column).
//
// How: each output block is held in 16 vector registers while the shared dimension is summed (4 rows x 64
// columns, or for d x h^T 4 x 4 dot products whose 16 partial-sum vectors are folded into one at the end);
// a row of the product then never leaves the registers until it is done. The sums run in another order than
// MKL's, so results can differ from ATen's in the last bits; tests/test_native.py compares both.

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "native_kernels.h"
#include "native_simd.h"

namespace mtl {

#ifdef MTL_X86
namespace {

// c[R rows, columns col .. col + 16V) = a (R, k) x b (k, n) [+ bias per row] [then max(0, .)]; a's rows
// lda apart, b's and c's rows n apart; the last vector masked to the columns that exist.
template <int R, int V>
MTL_AVX512 inline void row_block(const float* a, int64_t lda, const float* b, const float* bias, float* c, int64_t k,
                                 int64_t n, int64_t col, bool relu) {
  __m512 acc[R][V];
  __mmask16 mask[V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) mask[v] = lanes(n - col - 16 * v);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = bias ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    __m512 row[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) row[v] = _mm512_maskz_loadu_ps(mask[v], b + i * n + col + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 weight = _mm512_set1_ps(a[r * lda + i]);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(weight, row[v], acc[r][v]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v)  // max(0, NaN) is the NaN, as clamp_min's
      _mm512_mask_storeu_ps(c + r * n + col + 16 * v, mask[v], relu ? _mm512_max_ps(zero, acc[r][v]) : acc[r][v]);
}

// Columns [col, col + 16V) of every row, four rows at a time (b's stretch stays in the L1 cache meanwhile).
template <int V>
MTL_AVX512 void column_panel(const float* a, int64_t lda, const float* b, const float* bias, float* c, int64_t m,
                             int64_t k, int64_t n, int64_t col, bool relu) {
  int64_t r = 0;
  for (; r + 4 <= m; r += 4)
    row_block<4, V>(a + r * lda, lda, b, bias ? bias + r : nullptr, c + r * n, k, n, col, relu);
  for (; r < m; ++r) row_block<1, V>(a + r * lda, lda, b, bias ? bias + r : nullptr, c + r * n, k, n, col, relu);
}

MTL_AVX512 void matmul_x86(const float* a, int64_t lda, const float* b, const float* bias, float* c, int64_t m,
                           int64_t k, int64_t n, bool relu) {
  int64_t col = 0;
  for (; col + 64 <= n; col += 64) column_panel<4>(a, lda, b, bias, c, m, k, n, col, relu);
  for (; col < n; col += 16) column_panel<1>(a, lda, b, bias, c, m, k, n, col, relu);
}

// (x's lanes `lo`, y's lanes `lo`) + (x's lanes `hi`, y's lanes `hi`): one level of the fold below.
MTL_AVX512 inline __m512 fold(__m512 x, __m512 y, __m512i lo, __m512i hi) {
  return _mm512_add_ps(_mm512_permutex2var_ps(x, lo, y), _mm512_permutex2var_ps(x, hi, y));
}

// One vector whose lane l is the sum of v[l]'s 16 lanes: four levels of pairwise folds, each halving the
// vectors and the lanes per vector while keeping the order (15 folds instead of 16 separate reductions).
MTL_AVX512 inline __m512 lane_sums(const __m512* v) {
  const __m512i lo1 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i hi1 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const __m512i lo2 = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i hi2 = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  const __m512i lo3 = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
  const __m512i hi3 = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  const __m512i lo4 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i hi4 = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __m512 pairs[8], quads[4], octets[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) pairs[i] = fold(v[2 * i], v[2 * i + 1], lo1, hi1);  // halves: v[2i], v[2i+1]
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) quads[i] = fold(pairs[2 * i], pairs[2 * i + 1], lo2, hi2);  // quarters
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) octets[i] = fold(quads[2 * i], quads[2 * i + 1], lo3, hi3);  // eighths
  return fold(octets[0], octets[1], lo4, hi4);
}

MTL_AVX512 void matmul_nt_x86(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n) {
  for (int64_t i = 0; i < m; i += 4) {
    for (int64_t j = 0; j < k; j += 4) {
      // A 4 x 4 block of dot products; past the last row of a or b the block repeats that row, and the
      // repeats are not stored.
      const float* a_rows[4];
      const float* b_rows[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        a_rows[q] = a + std::min(i + q, m - 1) * n;
        b_rows[q] = b + std::min(j + q, k - 1) * n;
      }
      __m512 acc[16];
#pragma GCC unroll 16
      for (int q = 0; q < 16; ++q) acc[q] = _mm512_setzero_ps();
      for (int64_t x = 0; x < n; x += 16) {
        const __mmask16 mask = lanes(n - x);
        __m512 av[4], bv[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          av[q] = _mm512_maskz_loadu_ps(mask, a_rows[q] + x);
          bv[q] = _mm512_maskz_loadu_ps(mask, b_rows[q] + x);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
          for (int s = 0; s < 4; ++s) acc[r * 4 + s] = _mm512_fmadd_ps(av[r], bv[s], acc[r * 4 + s]);
      }
      alignas(64) float sums[16];
      _mm512_store_ps(sums, lane_sums(acc));
      for (int r = 0; r < 4 && i + r < m; ++r)
        for (int s = 0; s < 4 && j + s < k; ++s) c[(i + r) * k + j + s] = sums[r * 4 + s];
    }
  }
}

}  // namespace
#endif  // MTL_X86

void matmul(const float* a, const float* b, const float* bias, float* c, int64_t m, int64_t k, int64_t n,
            bool relu) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "matmul needs AVX-512");
  matmul_x86(a, k, b, bias, c, m, k, n, relu);
#else
  (void)a, (void)b, (void)bias, (void)c, (void)m, (void)k, (void)n, (void)relu;
  TORCH_CHECK(false, "matmul needs an x86-64 CPU with AVX-512");
#endif
}

void matmul_tn(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "matmul_tn needs AVX-512");
  // a^T laid out first: reading a's columns in place, a scalar 256 bytes from the last, ran 3x slower.
  std::vector<float> a_t(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t r = 0; r < m; ++r) a_t[r * k + i] = a[i * m + r];
  matmul_x86(a_t.data(), k, b, nullptr, c, m, k, n, false);
#else
  (void)a, (void)b, (void)c, (void)m, (void)k, (void)n;
  TORCH_CHECK(false, "matmul_tn needs an x86-64 CPU with AVX-512");
#endif
}

void matmul_nt(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "matmul_nt needs AVX-512");
  matmul_nt_x86(a, b, c, m, k, n);
#else
  (void)a, (void)b, (void)c, (void)m, (void)k, (void)n;
  TORCH_CHECK(false, "matmul_nt needs an x86-64 CPU with AVX-512");
#endif
}

// The three on tensors, for tests: `form` "nn" a (m, k) x b (k, n) [+ bias] [relu], "tn" a^T x b, "nt" a x b^T.
at::Tensor small_matmul(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& bias, bool relu,
                        const std::string& form) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat,
              "small_matmul: two float matrices");
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  if (form == "nt") {
    TORCH_CHECK(x.size(1) == y.size(1), "small_matmul: shapes do not fit");
    at::Tensor out = at::empty({x.size(0), y.size(0)}, x.options());
    matmul_nt(x.const_data_ptr<float>(), y.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x.size(0),
              y.size(0), x.size(1));
    return out;
  }
  const bool tn = form == "tn";
  TORCH_CHECK(tn || form == "nn", "small_matmul: form nn, tn or nt");
  const int64_t m = tn ? x.size(1) : x.size(0), k = tn ? x.size(0) : x.size(1), n = y.size(1);
  TORCH_CHECK(y.size(0) == k, "small_matmul: shapes do not fit");
  at::Tensor out = at::empty({m, n}, x.options());
  if (tn) {
    matmul_tn(x.const_data_ptr<float>(), y.const_data_ptr<float>(), out.mutable_data_ptr<float>(), m, k, n);
    return out;
  }
  at::Tensor row_bias;
  if (bias.has_value()) {
    row_bias = bias->contiguous();
    TORCH_CHECK(row_bias.scalar_type() == at::kFloat && row_bias.numel() == m, "small_matmul: one float bias per row");
  }
  matmul(x.const_data_ptr<float>(), y.const_data_ptr<float>(),
         row_bias.defined() ? row_bias.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(), m, k, n, relu);
  return out;
}

}  // namespace mtl
