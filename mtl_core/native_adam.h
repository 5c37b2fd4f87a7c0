// The Adam update of native_adam.cpp, for the batch loop in native_steps.cpp.
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

// Whether this CPU runs adam_update (x86-64 with AVX-512 F, BW and VL).
bool adam_supported();

// Adam on n elements: parameters p, gradient `grad` (float, or bf16 when bf16_grad), moments m and v,
// updated in place; where bf16_copy is not null the updated parameters are also written there in bf16.
// On up to `threads` threads.
void adam_update(float* p, const void* grad, bool bf16_grad, float* m, float* v, uint16_t* bf16_copy, int64_t n,
                 const AdamCoefficients& c, int threads);

}  // namespace mtl
