// The MLP step's element-wise work in AVX-512, for native_steps.cpp (built by mtl_core/native.py into the
// same module), and whether this CPU has AVX-512 at all (the loop's kernels need F, BW and VL).
//
// Why: at batch 128 these are passes over 64 KB of activations, and as ATen calls each one also paid its
// dispatch and a fresh output. Written out here, the first layer's bias and ReLU are one pass instead of
// two, so are each layer's ReLU gradient and bias gradient, and the cross-stitch mixing is three plain loops
// instead of three small matrix products: a
// cross-stitch epoch 1.04x faster on one thread and 1.07x on two, hard sharing's 1.02x and 1.04x (side by
// side with the ATen calls, full MNIST).
//
// `bias_relu` computes exactly what at::add and clamp_min_ do (one float add, then max(0, v) with a NaN
// kept), `relu_grad` what at::threshold_backward does (its bias sum is in its own order). The mixing sums its c terms in its own order, so it can differ from the matrix product in the
// last bit; tests/test_native.py holds whole epochs to the Python loop's.

#include <torch/extension.h>

#include <cstdint>

#include "native_kernels.h"
#include "native_simd.h"

namespace mtl {

bool avx512_supported() {
#ifdef MTL_X86
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

#ifdef MTL_X86
namespace {

MTL_AVX512 void bias_relu_x86(const uint16_t* prod, const float* bias, float* out, int64_t rows, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 b = _mm512_set1_ps(bias[r]);
    const uint16_t* src = prod + r * n;
    float* dst = out + r * n;
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = lanes(n - i);
      const __m512 v = _mm512_add_ps(b, widen_bf16(_mm256_maskz_loadu_epi16(mask, src + i)));
      _mm512_mask_storeu_ps(dst + i, mask, _mm512_max_ps(zero, v));  // max(0, NaN) is the NaN, as clamp_min's
    }
  }
}

MTL_AVX512 void mix_columns_x86(const float* a, const float* in, float* out, int64_t c, int64_t e, bool transpose_a) {
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t k = 0; k < e; k += 16) {
      const __mmask16 mask = lanes(e - k);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < c; ++j) {
        const float weight = transpose_a ? a[j * c + i] : a[i * c + j];
        sum = _mm512_fmadd_ps(_mm512_set1_ps(weight), _mm512_maskz_loadu_ps(mask, in + j * e + k), sum);
      }
      _mm512_mask_storeu_ps(out + i * e + k, mask, sum);
    }
  }
}

MTL_AVX512 void mix_gradient_x86(const float* d, const float* r, float* g, int64_t c, int64_t e) {
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t j = 0; j < c; ++j) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t k = 0; k < e; k += 16) {
        const __mmask16 mask = lanes(e - k);
        const __m512 dv = _mm512_maskz_loadu_ps(mask, d + i * e + k);
        sum = _mm512_fmadd_ps(dv, _mm512_maskz_loadu_ps(mask, r + j * e + k), sum);
      }
      g[i * c + j] = _mm512_reduce_add_ps(sum);
    }
  }
}

MTL_AVX512 void relu_grad_x86(float* d, const float* r, float* bias_grad, int64_t rows, int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < rows; ++i) {
    float* row = d + i * n;
    const float* out = r + i * n;
    __m512 sum = zero;
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 mask = lanes(n - k);
      // kept where not (output <= 0), a NaN output included: threshold_backward's test
      const __mmask16 live = _mm512_mask_cmp_ps_mask(mask, _mm512_maskz_loadu_ps(mask, out + k), zero, _CMP_NLE_UQ);
      const __m512 kept = _mm512_maskz_loadu_ps(live, row + k);
      _mm512_mask_storeu_ps(row + k, mask, kept);
      sum = _mm512_add_ps(sum, kept);
    }
    bias_grad[i] = _mm512_reduce_add_ps(sum);
  }
}

}  // namespace
#endif  // MTL_X86

void bias_relu(const uint16_t* prod, const float* bias, float* out, int64_t rows, int64_t n) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "bias_relu needs AVX-512");
  bias_relu_x86(prod, bias, out, rows, n);
#else
  (void)prod, (void)bias, (void)out, (void)rows, (void)n;
  TORCH_CHECK(false, "bias_relu needs an x86-64 CPU with AVX-512");
#endif
}

void mix_columns(const float* a, const float* in, float* out, int64_t c, int64_t e, bool transpose_a) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "mix_columns needs AVX-512");
  mix_columns_x86(a, in, out, c, e, transpose_a);
#else
  (void)a, (void)in, (void)out, (void)c, (void)e, (void)transpose_a;
  TORCH_CHECK(false, "mix_columns needs an x86-64 CPU with AVX-512");
#endif
}

void relu_grad(float* d, const float* r, float* bias_grad, int64_t rows, int64_t n) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "relu_grad needs AVX-512");
  relu_grad_x86(d, r, bias_grad, rows, n);
#else
  (void)d, (void)r, (void)bias_grad, (void)rows, (void)n;
  TORCH_CHECK(false, "relu_grad needs an x86-64 CPU with AVX-512");
#endif
}

void mix_gradient(const float* d, const float* r, float* g, int64_t c, int64_t e) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "mix_gradient needs AVX-512");
  mix_gradient_x86(d, r, g, c, e);
#else
  (void)d, (void)r, (void)g, (void)c, (void)e;
  TORCH_CHECK(false, "mix_gradient needs an x86-64 CPU with AVX-512");
#endif
}

}  // namespace mtl
