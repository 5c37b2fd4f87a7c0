// The MLPs' Adam (and AdamW) update in AVX-512, for the C++ batch loop in native_steps.cpp (built by
// mtl_core/native.py into the same module).
//
// Why: the update streams the parameters, gradient and both moments (about 2.9 MB a step for
// cross-stitch), and under bf16 the step also cast the first layer's weights to bf16 (a read of 400 KB
// and a write of 200 KB) and copied that layer's bf16 weight gradient into the fp32 buffer (the same
// again). This update reads the bf16 gradient as it is and writes the bf16 copy as it updates the
// weights, in the one pass; and called from C++ it has none of the fused kernel's per-call cost (104,714
// elements on one thread: 18-21 us against 35-38 us). MLP epochs 1.07-1.09x faster on one thread, side by
// side with the same loop calling torch's kernel.
//
// The arithmetic is torch's `_fused_adam_` / `_fused_adamw_` for float, operation for operation and in
// the same order (its vector body, fused multiply-adds where it has them), so the result is the same
// bit for bit; only a part's last (numel % 16) elements, which torch runs through a scalar loop, can
// differ in the last bit (tests/test_native.py checks both). Only on x86-64 CPUs with AVX-512 (F, BW,
// VL), picked at run time; elsewhere `avx512_supported()` is false and the loop calls torch's kernel.

#include <torch/extension.h>

#include <cmath>
#include <cstdint>

#include "native_kernels.h"
#include "native_simd.h"

namespace mtl {

AdamCoefficients adam_coefficients(double step, double lr, double beta1, double beta2, double weight_decay,
                                   double eps, bool decoupled) {
  // As torch computes them: in double, then each rounded to float once.
  const double bias_correction1 = 1 - std::pow(beta1, step);
  const double bias_correction2 = 1 - std::pow(beta2, step);
  AdamCoefficients c;
  c.exp_avg_weight = static_cast<float>(1 - beta1);  // exp_avg.lerp_(grad, 1 - beta1)
  c.beta2 = static_cast<float>(beta2);
  c.sq_weight = static_cast<float>(1 - beta2);
  c.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  c.eps = static_cast<float>(eps);
  c.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  c.decay = static_cast<float>(weight_decay);
  c.decay_factor = static_cast<float>(1 - lr * weight_decay);
  c.decoupled = decoupled;
  return c;
}

#ifdef MTL_X86
namespace {

MTL_AVX512 inline __m512 load_bf16(const uint16_t* src, __mmask16 mask) {
  return widen_bf16(_mm256_maskz_loadu_epi16(mask, src));
}

// float -> bf16 rounded to nearest even, as torch's conversion (a NaN stays a NaN, never rounds to inf).
MTL_AVX512 inline __m256i to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

// Elements [0, n): 16 at a time, the last (n % 16) under a mask through the same arithmetic.
template <bool kBf16Grad, bool kBf16Copy>
MTL_AVX512 void adam_span(float* p, const void* grad, float* m, float* v, uint16_t* copy, int64_t n,
                           const AdamCoefficients& c) {
  const __m512 w1 = _mm512_set1_ps(c.exp_avg_weight), b2 = _mm512_set1_ps(c.beta2),
               w2 = _mm512_set1_ps(c.sq_weight), bc2 = _mm512_set1_ps(c.bias_correction2_sqrt),
               eps = _mm512_set1_ps(c.eps), neg_step = _mm512_set1_ps(c.neg_step_size),
               decay = _mm512_set1_ps(c.decay), decay_factor = _mm512_set1_ps(c.decay_factor);
  const bool decays = c.decay != 0.f;
  for (int64_t d = 0; d < n; d += 16) {
    const __mmask16 mask = lanes(n - d);
    __m512 pv = _mm512_maskz_loadu_ps(mask, p + d);
    __m512 g = kBf16Grad ? load_bf16(static_cast<const uint16_t*>(grad) + d, mask)
                         : _mm512_maskz_loadu_ps(mask, static_cast<const float*>(grad) + d);
    if (decays) {
      if (c.decoupled) {
        pv = _mm512_mul_ps(pv, decay_factor);
      } else {
        g = _mm512_add_ps(g, _mm512_mul_ps(pv, decay));
      }
    }
    __m512 mv = _mm512_maskz_loadu_ps(mask, m + d);
    mv = _mm512_fmadd_ps(w1, _mm512_sub_ps(g, mv), mv);  // lerp with a weight under 0.5
    const __m512 vv = _mm512_fmadd_ps(_mm512_mul_ps(w2, g), g, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, v + d), b2));
    _mm512_mask_storeu_ps(m + d, mask, mv);
    _mm512_mask_storeu_ps(v + d, mask, vv);
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vv), bc2), eps);
    pv = _mm512_add_ps(pv, _mm512_div_ps(_mm512_mul_ps(neg_step, mv), denom));
    _mm512_mask_storeu_ps(p + d, mask, pv);
    if (kBf16Copy) _mm256_mask_storeu_epi16(copy + d, mask, to_bf16(pv));
  }
}

}  // namespace
#endif  // MTL_X86

void adam_update(float* p, const void* grad, bool bf16_grad, float* m, float* v, uint16_t* bf16_copy, int64_t n,
                 const AdamCoefficients& c, int threads) {
#ifdef MTL_X86
  TORCH_CHECK(avx512_supported(), "adam_update needs AVX-512");
  // The work split into whole 16-element blocks, one share per thread (a share of 100k elements is
  // far more work than waking a thread costs).
  const int64_t blocks = (n + 15) / 16;
  const int team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, blocks / 256)));
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
  for (int share = 0; share < team; ++share) {
    const int64_t first = blocks * share / team * 16, last = std::min(n, blocks * (share + 1) / team * 16);
    if (first >= last) continue;
    const int64_t count = last - first;
    if (bf16_grad) {
      const uint16_t* g = static_cast<const uint16_t*>(grad) + first;
      if (bf16_copy) {
        adam_span<true, true>(p + first, g, m + first, v + first, bf16_copy + first, count, c);
      } else {
        adam_span<true, false>(p + first, g, m + first, v + first, nullptr, count, c);
      }
    } else {
      const float* g = static_cast<const float*>(grad) + first;
      if (bf16_copy) {
        adam_span<false, true>(p + first, g, m + first, v + first, bf16_copy + first, count, c);
      } else {
        adam_span<false, false>(p + first, g, m + first, v + first, nullptr, count, c);
      }
    }
  }
#else
  (void)p, (void)grad, (void)bf16_grad, (void)m, (void)v, (void)bf16_copy, (void)n, (void)c, (void)threads;
  TORCH_CHECK(false, "adam_update needs an x86-64 CPU with AVX-512");
#endif
}

// The update on tensors, for tests/test_native.py: p, m, v contiguous float; g float or bf16; `copy`, where
// given, a bf16 tensor of p's size that gets the updated parameters.
void adam_step(at::Tensor p, const at::Tensor& g, at::Tensor m, at::Tensor v, const c10::optional<at::Tensor>& copy,
               double step, double lr, double beta1, double beta2, double weight_decay, double eps, bool decoupled,
               int64_t threads) {
  const int64_t n = p.numel();
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&p, &g, &m, &v})
    TORCH_CHECK(t->is_contiguous() && t->numel() == n, "adam_step: contiguous tensors of one size");
  TORCH_CHECK(p.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "adam_step: float parameters and moments");
  const bool bf16_grad = g.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16_grad || g.scalar_type() == at::kFloat, "adam_step: a float or bf16 gradient");
  uint16_t* out = nullptr;
  if (copy.has_value()) {
    TORCH_CHECK(copy->scalar_type() == at::kBFloat16 && copy->is_contiguous() && copy->numel() == n,
                "adam_step: a contiguous bf16 copy of p's size");
    out = static_cast<uint16_t*>(copy->data_ptr());
  }
  adam_update(p.data_ptr<float>(), g.const_data_ptr(), bf16_grad, m.data_ptr<float>(), v.data_ptr<float>(), out, n,
              adam_coefficients(step, lr, beta1, beta2, weight_decay, eps, decoupled), static_cast<int>(threads));
}

}  // namespace mtl
