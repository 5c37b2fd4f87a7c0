// The AVX-512 kernels of the MLPs' C++ step and loop (native_steps.cpp): the Adam update
// (native_adam.cpp), the step's element-wise work (native_elementwise.cpp) and its second layer's small
// matrix products (native_matmul.cpp). All matrices are float, row-major and contiguous.
#pragma once

#include <cstdint>

namespace mtl {

// One step's scalars, computed as torch's fused kernel computes them.
struct AdamCoefficients {
  float exp_avg_weight, beta2, sq_weight, bias_correction2_sqrt, eps, neg_step_size, decay, decay_factor;
  bool decoupled;  // AdamW: the decay scales the weights, not added to the gradient
};

AdamCoefficients adam_coefficients(double step, double lr, double beta1, double beta2, double weight_decay,
                                   double eps, bool decoupled);

// Whether this CPU runs the kernels below (x86-64 with AVX-512 F, BW and VL), checked at run time; the
// CNNs' pooling (native_pool.cpp) needs the same.
bool avx512_supported();

// Adam on n elements: parameters p, gradient `grad` (float, or bf16 when bf16_grad), moments m and v,
// updated in place; where bf16_copy is not null the updated parameters are also written there in bf16.
// On up to `threads` threads.
void adam_update(float* p, const void* grad, bool bf16_grad, float* m, float* v, uint16_t* bf16_copy, int64_t n,
                 const AdamCoefficients& c, int threads);

// relu(bias[r] + prod[r, i]) into out (rows, n) float, prod (rows, n) bf16: at::add then clamp_min_(0),
// value for value (NaN kept), in one pass.
void bias_relu(const uint16_t* prod, const float* bias, float* out, int64_t rows, int64_t n);

// d (rows, n) zeroed in place where the ReLU's output r is <= 0 (at::threshold_backward(d, r, 0)), and
// bias_grad[i] the sum of row i of the result.
void relu_grad(float* d, const float* r, float* bias_grad, int64_t rows, int64_t n);

// out (c, e) = a (c, c) x in (c, e), or a^T x in where `transpose_a`: the cross-stitch mixing (c columns,
// e = width x batch values each).
void mix_columns(const float* a, const float* in, float* out, int64_t c, int64_t e, bool transpose_a);

// g (c, c) = d (c, e) x r (c, e)^T: the mixing matrix's gradient.
void mix_gradient(const float* d, const float* r, float* g, int64_t c, int64_t e);

// c (m, n) = a (m, k) x b (k, n), plus bias[r] on row r where bias is not null, then max(0, .) where relu
// (a NaN kept, as clamp_min's).
void matmul(const float* a, const float* b, const float* bias, float* c, int64_t m, int64_t k, int64_t n, bool relu);

// c (m, n) = a (k, m)^T x b (k, n).
void matmul_tn(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n);

// c (m, k) = a (m, n) x b (k, n)^T.
void matmul_nt(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n);

}  // namespace mtl
