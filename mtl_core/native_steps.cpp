// The MLPs' hand-written training step and batch loop in C++ (built by mtl_core/native.py).
//
// The same ATen operations as the Python steps in mtl_core/fastpath.py, called without Python in
// between: at batch 128 a step is about 40 small operations, and Python's cost per operation (2-3 us)
// was a quarter of the step. The maths is not changed; tests/test_native.py checks the gradients
// against autograd and whole epochs against the Python loop.
//
// Layout: feature-major, as the Python ColumnsStep. C columns (1 for hard sharing, T for STL and
// cross-stitch), every task binary with one logit:
//   w1 (C*64, 784)  b1 (C*64, 1)  w2 (C, 32, 64)  b2 (C, 32, 1)  wh (T, 32)  bh (T, 1)  [a1, a2 (T, T)]
// Gradients come in the same order and shapes; all are views of one flat buffer.

#include <torch/extension.h>

#include <cmath>
#include <tuple>
#include <vector>

using at::Tensor;

namespace {

enum Kind : int64_t { HARD = 0, STL = 1, CROSS_STITCH = 2 };

// One step: the task losses (T,), and every gradient of sum_t weight_t * loss_t written into `g`.
// x (B, 784) in the first layer's dtype (bfloat16 when `bf16`), y (T, B) the 0/1 targets.
Tensor step(int64_t kind, const Tensor& x, const Tensor& y, const std::vector<Tensor>& p,
            std::vector<Tensor>& g, const Tensor& weights, bool bf16) {
  const Tensor &w1 = p[0], &b1 = p[1], &w2 = p[2], &b2 = p[3], &wh = p[4], &bh = p[5];
  const int64_t n = x.size(0), c = w2.size(0), h2 = w2.size(1), t = wh.size(0);
  const bool mixing = kind == CROSS_STITCH;
  // First layer: (C*64, 784) x (784, B); in bf16 the product is rounded once, the bias added in fp32.
  Tensor a1 = bf16 ? at::add(b1, at::mm(w1.to(at::kBFloat16), x.t())) : at::addmm(b1, w1, x.t());
  Tensor r1 = a1.clamp_min_(0).view({c, -1, n});  // (C, 64, B)
  Tensor m1 = mixing ? at::mm(p[6], r1.view({c, -1})).view(r1.sizes()) : r1;
  Tensor r2 = at::baddbmm(b2, w2, m1).clamp_min_(0);  // (C, 32, B)
  Tensor r2_all = r2.view({c * h2, n});
  // The heads over all columns' features: hard sharing's own; for the columns, head i reads
  // sum_j a2[i, j] * column j (a2 the identity for STL), folded into one (T, C*32) matrix.
  Tensor a2 = kind == HARD ? Tensor() : (mixing ? p[7] : at::eye(t, wh.options()));
  Tensor heads = kind == HARD ? wh : (a2.unsqueeze(2) * wh.unsqueeze(1)).view({t, -1});
  Tensor z = at::addmm(bh, heads, r2_all);  // (T, B)
  Tensor losses = at::binary_cross_entropy_with_logits(z, y, {}, {}, at::Reduction::None).mean(1);
  Tensor dz = (at::sigmoid(z) - y).mul_(weights.view({t, 1}) / n);
  Tensor g_heads = kind == HARD ? g[4] : at::empty({t, c * h2}, wh.options());
  at::mm_out(g_heads, dz, r2_all.t());
  at::sum_out(g[5], dz, {1}, true);
  Tensor d2 = at::threshold_backward(at::mm(heads.t(), dz).view({c, h2, n}), r2, 0);
  at::bmm_out(g[2], d2, m1.transpose(1, 2));
  at::sum_out(g[3], d2, {2}, true);
  Tensor d1 = at::bmm(w2.transpose(1, 2), d2);  // (C, 64, B), at the mixed features
  if (mixing) {
    Tensor d_mixed = d1.view({c, -1});
    at::mm_out(g[6], d_mixed, r1.view({c, -1}).t());
    d1 = at::mm(p[6].t(), d_mixed).view(r1.sizes());
  }
  d1 = at::threshold_backward(d1, r1, 0).view({-1, n});  // (C*64, B)
  if (bf16) {
    g[0].copy_(at::mm(d1.to(at::kBFloat16), x));  // the weight gradient in the forward's precision
  } else {
    at::mm_out(g[0], d1, x);
  }
  at::sum_out(g[1], d1, {1}, true);
  if (kind != HARD) {  // the folded heads' gradient, back to the heads and a2 (product rule)
    Tensor gh = g_heads.view({t, c, -1});
    at::sum_out(g[4], gh * a2.unsqueeze(2), {1});
    if (mixing) at::sum_out(g[7], gh * wh.unsqueeze(1), {2});
  }
  return losses;
}

// Batches [begin, end) of an epoch: for each, gather the batch, step, and update every parameter with
// the fused Adam (or AdamW) kernel, one call per part of the flat buffer (the cross-stitch alphas may
// have their own rate). Returns (the last batch's losses, the index of the first batch whose weighted
// loss is not finite, or -1); a non-finite batch is not applied. `sums` accumulates losses x batch size.
std::tuple<Tensor, int64_t> train_batches(
    int64_t kind, const Tensor& x_all, const Tensor& y_all, const std::vector<Tensor>& batches, int64_t begin,
    int64_t end, const std::vector<Tensor>& p, std::vector<Tensor>& g, const Tensor& weights, bool bf16,
    const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avgs,
    const std::vector<Tensor>& exp_avg_sqs, const Tensor& step_count, const std::vector<double>& lrs,
    const std::vector<double>& decays, bool decoupled, double beta1, double beta2, double eps, Tensor sums) {
  Tensor losses;
  const std::vector<Tensor> steps{step_count};
  for (int64_t b = begin; b < end; ++b) {
    const Tensor& idx = batches[b];
    losses = step(kind, x_all.index_select(0, idx), y_all.index_select(0, idx).t(), p, g, weights, bf16);
    if (!std::isfinite(at::dot(losses, weights).item<double>())) {
          return {losses, b};
    }
    step_count.add_(1);
      for (size_t i = 0; i < params.size(); ++i) {
      if (decoupled) {
        at::_fused_adamw_({params[i]}, {grads[i]}, {exp_avgs[i]}, {exp_avg_sqs[i]}, {}, steps, lrs[i], beta1, beta2,
                          decays[i], eps, false, false);
      } else {
        at::_fused_adam_({params[i]}, {grads[i]}, {exp_avgs[i]}, {exp_avg_sqs[i]}, {}, steps, lrs[i], beta1, beta2,
                         decays[i], eps, false, false);
      }
    }
      sums.add_(losses, idx.size(0));
  }
  return {losses, -1};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "one training step's losses and gradients (see mtl_core/native_steps.cpp)");
  m.def("train_batches", &train_batches, "batches [begin, end) of an epoch: step and fused Adam each");
}
