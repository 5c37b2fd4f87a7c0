// The MLPs' hand-written training step and batch loop in C++ (built by mtl_core/native/__init__.py).
//
// The same maths as the Python steps in mtl_core/training/fastpath.py, called without Python in between: at batch
// 128 a step is about 40 small operations, and Python's cost per operation (2-3 us) was a quarter of the
// step. Every operation is ATen's (oneDNN's products, torch's fused Adam); only the loss heads and the
// folded heads' weights, a few hundred values each, are plain loops here. No ISA-specific code here: the
// compiler's baseline, so one build runs wherever torch runs (the CNNs' max-pool, native_pool.cpp, has an
// AVX-512 twin beside its portable one). tests/test_native.py
// checks the gradients against autograd and whole epochs against the Python loop.
//
// Layout: feature-major, as the Python ColumnsStep (MMoE: see mmoe_step). C columns (1 for hard sharing,
// T for STL and cross-stitch); the T tasks' heads have K logits in all, task i's rows [offsets[i],
// offsets[i+1]):
//   w1 (C*64, 784)  b1 (C*64, 1)  w2 (C, 32, 64)  b2 (C, 32, 1)  wh (K, 32)  bh (K, 1)  [a1, a2 (T, T)]
// Gradients come in the same order and shapes; all are views of one flat buffer, each contiguous (the
// loops below read and write them through plain pointers). A task is binary (one logit, BCE), multiclass
// (softmax cross-entropy over its logits) or regression (MSE on the sigmoid of its one logit), as
// fastpath._HeadsStep._loss_grad; targets come as (B, T) floats, a class as its index.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

using at::Tensor;

namespace {

enum Kind : int64_t { HARD = 0, STL = 1, CROSS_STITCH = 2, MMOE = 3 };

// The heads' losses (K x B logits) as plain loops: there one ATen call per operation (dispatch, an
// allocation) cost more than the arithmetic.

enum HeadKind : int64_t { BINARY = 0, MULTICLASS = 1, REGRESSION = 2 };

// The task losses (each the batch mean) for logits z (K, B) and targets y (B, T), their gradient dz =
// d(sum_t w_t L_t)/dz, and the heads' bias gradient (dz summed over the batch). Returns sum_t w_t L_t.
template <typename scalar_t>
double head_losses(const scalar_t* z, const scalar_t* y, const scalar_t* w, const std::vector<int64_t>& kinds,
                   const std::vector<int64_t>& offsets, scalar_t* losses, scalar_t* dz, scalar_t* g_bias, int64_t n) {
  const int64_t t = static_cast<int64_t>(kinds.size());
  double total = 0;
  for (int64_t task = 0; task < t; ++task) {
    const int64_t lo = offsets[task], hi = offsets[task + 1];
    const scalar_t scale = w[task] / static_cast<scalar_t>(n);
    double loss = 0;
    if (kinds[task] == MULTICLASS) {
      for (int64_t b = 0; b < n; ++b) {
        scalar_t top = z[lo * n + b];
        for (int64_t r = lo + 1; r < hi; ++r) top = std::max(top, z[r * n + b]);
        scalar_t sum = 0;
        for (int64_t r = lo; r < hi; ++r) sum += std::exp(z[r * n + b] - top);
        const scalar_t label = y[b * t + task];
        TORCH_CHECK(label >= 0 && label < hi - lo, "a class target outside the head's ", hi - lo, " classes");
        const int64_t target = lo + static_cast<int64_t>(label);
        loss += std::log(sum) + top - z[target * n + b];  // -log softmax at the target
        for (int64_t r = lo; r < hi; ++r)
          dz[r * n + b] = (std::exp(z[r * n + b] - top) / sum - (r == target ? scalar_t(1) : scalar_t(0))) * scale;
      }
    } else {  // one logit
      for (int64_t b = 0; b < n; ++b) {
        const scalar_t v = z[lo * n + b], target = y[b * t + task];
        const scalar_t s = scalar_t(1) / (scalar_t(1) + std::exp(-v));
        if (kinds[task] == BINARY) {
          // max(v, 0) - v * y + log(1 + exp(-|v|)): the stable form of the loss
          loss += std::max(v, scalar_t(0)) - v * target + std::log1p(std::exp(-std::abs(v)));
          dz[lo * n + b] = (s - target) * scale;
        } else {  // regression: (sigmoid(v) - y)^2
          const scalar_t diff = s - target;
          loss += diff * diff;
          dz[lo * n + b] = diff * s * (scalar_t(1) - s) * 2 * scale;
        }
      }
    }
    for (int64_t r = lo; r < hi; ++r) {
      scalar_t bias_sum = 0;
      for (int64_t b = 0; b < n; ++b) bias_sum += dz[r * n + b];
      g_bias[r] = bias_sum;
    }
    losses[task] = static_cast<scalar_t>(loss / n);
    total += static_cast<double>(w[task]) * losses[task];
  }
  return total;
}

// The 784-wide first layer: in bf16 the product (rounded once) and the bias added in fp32; else all in fp32.
Tensor first_layer(const Tensor& w1, const Tensor& b1, const Tensor& x, bool bf16) {
  if (!bf16) return at::addmm(b1, w1, x.t());
  return at::add(b1, at::mm(w1.to(at::kBFloat16), x.t()));
}

// Its weight gradient d (rows, B) x x (B, 784) into `out`, in the forward's precision.
void first_layer_grad(Tensor& out, const Tensor& d, const Tensor& x, bool bf16) {
  if (!bf16) {
    at::mm_out(out, d, x);
  } else {
    out.copy_(at::mm(d.to(at::kBFloat16), x));
  }
}

// The cross-stitch mixing of the columns' activations h (C, width, B) by a (C, C), or by a^T where `transpose`.
Tensor mix(const Tensor& a, const Tensor& h, bool transpose) {
  const int64_t c = h.size(0);
  return at::mm(transpose ? a.t() : a, h.view({c, -1})).view(h.sizes());
}

// The mixing matrix's gradient from the mixed activations' gradient d and the activations h, into g (C, C).
void mix_grad(Tensor& g, const Tensor& d, const Tensor& h) {
  const int64_t c = h.size(0);
  at::mm_out(g, d.view({c, -1}), h.view({c, -1}).t());
}

// The second layer per column (or expert), w2 (C, 32, 64) on h (C, 64, B): relu(b2 + w2 x h).
Tensor second_layer_relu(const Tensor& w2, const Tensor& b2, const Tensor& h) {
  return at::baddbmm(b2, w2, h).clamp_min_(0);
}

// Its input's gradient w2^T x d2 (C, 64, B), and its weights' d2 x h^T into g2 (C, 32, 64).
Tensor second_layer_input_grad(const Tensor& w2, const Tensor& d2) { return at::bmm(w2.transpose(1, 2), d2); }

void second_layer_weight_grad(Tensor& g2, const Tensor& d2, const Tensor& h) {
  at::bmm_out(g2, d2, h.transpose(1, 2));
}

// A layer's gradient through its ReLU (output r), in place, with its bias's gradient (the batch's sum) into g_bias.
void relu_grad(Tensor& d, const Tensor& r, Tensor& g_bias) {
  d = at::threshold_backward(d, r, 0);
  Tensor sums = g_bias.view({g_bias.numel(), 1});  // the same memory as g_bias, whatever its shape
  at::sum_out(sums, d.view({g_bias.numel(), -1}), {1}, true);
}

// MMoE (E experts, a softmax gate per task), as fastpath.MMoEStep but feature-major:
//   w1 (E*64 + T*E, 784): the experts' first layers, then every task's gate   b1 (E*64 + T*E, 1)
//   w2 (E, 32, 64)  b2 (E, 32, 1)  wh (K, 32)  bh (K, 1)
// Head t reads mixed_t = sum_e gate_t[e] * expert_e; the gates' gradient goes back through their softmax.
Tensor mmoe_step(const Tensor& x, const Tensor& y, const std::vector<Tensor>& p, std::vector<Tensor>& g,
                 const Tensor& weights, const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets,
                 bool bf16, double& total) {
  const Tensor &w1 = p[0], &b1 = p[1], &w2 = p[2], &b2 = p[3], &wh = p[4], &bh = p[5];
  const int64_t n = x.size(0), e = w2.size(0), h1 = w2.size(2), h2 = w2.size(1);
  const int64_t k = wh.size(0), t = static_cast<int64_t>(kinds.size());
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == t + 1 && offsets[t] == k, "the heads' offsets do not fit");
  const Tensor yc = y.contiguous();
  Tensor losses = at::empty({t}, wh.options());
  AT_DISPATCH_FLOATING_TYPES(wh.scalar_type(), "mmoe_step", [&] {
    Tensor a = first_layer(w1, b1, x, bf16);
    Tensor r1 = a.narrow(0, 0, e * h1).clamp_min(0).view({e, h1, n});                // (E, 64, B)
    Tensor gate = at::softmax(a.narrow(0, e * h1, t * e).view({t, e, n}), 1);         // (T, E, B)
    Tensor r2 = second_layer_relu(w2, b2, r1);                                   // (E, 32, B)
    Tensor mixed = (gate.unsqueeze(2) * r2.unsqueeze(0)).sum(1);                        // (T, 32, B)
    Tensor z = at::empty({k, n}, wh.options());
    for (int64_t i = 0; i < t; ++i) {
      const int64_t lo = offsets[i], rows = offsets[i + 1] - lo;
      Tensor zi = z.narrow(0, lo, rows);
      at::addmm_out(zi, bh.narrow(0, lo, rows), wh.narrow(0, lo, rows), mixed[i]);
    }
    Tensor dz = at::empty({k, n}, wh.options());
    total = head_losses(z.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(),
                        weights.const_data_ptr<scalar_t>(), kinds, offsets, losses.mutable_data_ptr<scalar_t>(),
                        dz.mutable_data_ptr<scalar_t>(), g[5].mutable_data_ptr<scalar_t>(), n);
    Tensor d_mixed = at::empty_like(mixed);
    for (int64_t i = 0; i < t; ++i) {
      const int64_t lo = offsets[i], rows = offsets[i + 1] - lo;
      Tensor g_wh = g[4].narrow(0, lo, rows), d_mi = d_mixed[i];
      at::mm_out(g_wh, dz.narrow(0, lo, rows), mixed[i].t());
      at::mm_out(d_mi, wh.narrow(0, lo, rows).t(), dz.narrow(0, lo, rows));
    }
    Tensor d_gate = (d_mixed.unsqueeze(1) * r2.unsqueeze(0)).sum(2);                   // (T, E, B)
    Tensor d_logits = gate * (d_gate - (gate * d_gate).sum(1, true));                  // through the softmax
    Tensor d2 = (gate.unsqueeze(2) * d_mixed.unsqueeze(1)).sum(0);  // (E, 32, B)
    relu_grad(d2, r2, g[3]);
    second_layer_weight_grad(g[2], d2, r1);
    Tensor d1 = at::threshold_backward(second_layer_input_grad(w2, d2), r1, 0);  // (E, 64, B)
    Tensor d_a = at::cat({d1.view({e * h1, n}), d_logits.view({t * e, n})}, 0);       // (E*64 + T*E, B)
    at::sum_out(g[1], d_a, {1}, true);
    first_layer_grad(g[0], d_a, x, bf16);
  });
  return losses;
}

// One step: the task losses (T,), and every gradient of sum_t weight_t * loss_t written into `g`;
// `total` gets that weighted sum. x (B, 784) in the first layer's dtype (bfloat16 when `bf16`), y (B, T)
// the targets in the parameters' dtype; `kinds` (T,) each task's HeadKind, `offsets` (T + 1) its logits.
Tensor step(int64_t kind, const Tensor& x, const Tensor& y, const std::vector<Tensor>& p, std::vector<Tensor>& g,
            const Tensor& weights, const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets, bool bf16,
            double& total) {
  if (kind == MMOE) return mmoe_step(x, y, p, g, weights, kinds, offsets, bf16, total);
  const Tensor &w1 = p[0], &b1 = p[1], &w2 = p[2], &b2 = p[3], &wh = p[4], &bh = p[5];
  const int64_t n = x.size(0), c = w2.size(0), h1 = w2.size(2), h2 = w2.size(1);
  const int64_t k = wh.size(0), t = static_cast<int64_t>(kinds.size());  // logits, tasks
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == t + 1 && offsets[t] == k, "the heads' offsets do not fit");
  std::vector<int64_t> task_of(k);  // which task each logit (head row) belongs to
  for (int64_t i = 0; i < t; ++i)
    for (int64_t r = offsets[i]; r < offsets[i + 1]; ++r) task_of[r] = i;
  const bool mixing = kind == CROSS_STITCH;
  const Tensor yc = y.contiguous();
  Tensor losses = at::empty({t}, wh.options());
  AT_DISPATCH_FLOATING_TYPES(wh.scalar_type(), "mlp_step", [&] {
    Tensor r1 = first_layer(w1, b1, x, bf16).clamp_min_(0).view({c, h1, n});  // (C, 64, B)
    Tensor m1 = mixing ? mix(p[6], r1, false) : r1;
    Tensor r2 = second_layer_relu(w2, b2, m1);  // (C, 32, B)
    Tensor r2_all = r2.view({c * h2, n});
    // The heads over all columns' features: hard sharing's own; for the columns, the head of task i reads
    // sum_j a2[i, j] * column j (a2 the identity for STL), folded into one (K, C*32) matrix.
    Tensor heads = wh, mix2;
    const scalar_t* a2 = nullptr;
    if (kind != HARD) {
      mix2 = mixing ? p[7] : at::eye(t, wh.options());
      a2 = mix2.const_data_ptr<scalar_t>();
      heads = at::empty({k, c * h2}, wh.options());
      const scalar_t* hw = wh.const_data_ptr<scalar_t>();
      scalar_t* hm = heads.mutable_data_ptr<scalar_t>();
      for (int64_t r = 0; r < k; ++r)
        for (int64_t j = 0; j < c; ++j)
          for (int64_t f = 0; f < h2; ++f) hm[(r * c + j) * h2 + f] = a2[task_of[r] * c + j] * hw[r * h2 + f];
    }
    Tensor z = at::addmm(bh, heads, r2_all);  // (K, B)
    Tensor dz = at::empty({k, n}, wh.options());
    total = head_losses(z.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(),
                        weights.const_data_ptr<scalar_t>(), kinds, offsets, losses.mutable_data_ptr<scalar_t>(),
                        dz.mutable_data_ptr<scalar_t>(), g[5].mutable_data_ptr<scalar_t>(), n);
    Tensor g_heads = kind == HARD ? g[4] : at::empty({k, c * h2}, wh.options());
    at::mm_out(g_heads, dz, r2_all.t());
    Tensor d2 = at::mm(heads.t(), dz).view({c, h2, n});
    relu_grad(d2, r2, g[3]);
    second_layer_weight_grad(g[2], d2, m1);
    Tensor d1 = second_layer_input_grad(w2, d2);  // (C, 64, B), at the mixed features
    if (mixing) {  // d1 is the mixed features' gradient: to a1's and to the unmixed features'
      mix_grad(g[6], d1, r1);
      d1 = mix(p[6], d1, true);
    }
    relu_grad(d1, r1, g[1]);
    d1 = d1.view({-1, n});  // (C*64, B)
    first_layer_grad(g[0], d1, x, bf16);
    if (kind != HARD) {  // the folded heads' gradient, back to the heads and a2 (product rule)
      const scalar_t* gh = g_heads.const_data_ptr<scalar_t>();
      const scalar_t* hw = wh.const_data_ptr<scalar_t>();
      scalar_t* g_wh = g[4].mutable_data_ptr<scalar_t>();
      scalar_t* g_a2 = mixing ? g[7].mutable_data_ptr<scalar_t>() : nullptr;
      for (int64_t i = 0; mixing && i < t * c; ++i) g_a2[i] = 0;
      for (int64_t r = 0; r < k; ++r) {
        const int64_t i = task_of[r];
        for (int64_t f = 0; f < h2; ++f) {
          scalar_t sum = 0;
          for (int64_t j = 0; j < c; ++j) sum += gh[(r * c + j) * h2 + f] * a2[i * c + j];
          g_wh[r * h2 + f] = sum;
        }
        for (int64_t j = 0; mixing && j < c; ++j) {
          scalar_t sum = 0;
          for (int64_t f = 0; f < h2; ++f) sum += gh[(r * c + j) * h2 + f] * hw[r * h2 + f];
          g_a2[i * c + j] += sum;
        }
      }
    }
  });
  return losses;
}

// torch's intra-op threads set for a scope and put back after it (the caller's count is what the worker
// shares out; the training loop picks, per chunk of batches, one thread or all of them).
struct ThreadsFor {
  const int before;
  explicit ThreadsFor(int64_t n) : before(at::get_num_threads()) {
    if (n > 0 && n != before) at::set_num_threads(static_cast<int>(n));
  }
  ~ThreadsFor() {
    if (at::get_num_threads() != before) at::set_num_threads(before);
  }
};

// The Adam state of the flat buffer, one entry per part (the cross-stitch alphas may have their own rate).
struct AdamParts {
  const std::vector<Tensor>& params;
  const std::vector<Tensor>& grads;
  const std::vector<Tensor>& exp_avgs;
  const std::vector<Tensor>& exp_avg_sqs;
  const std::vector<double>& lrs;
  const std::vector<double>& decays;
  bool decoupled;
  double beta1, beta2, eps;
};

// One update with torch's fused kernel, one call per part.
void torch_update(const AdamParts& a, const Tensor& step_count) {
  const std::vector<Tensor> steps{step_count};
  for (size_t i = 0; i < a.params.size(); ++i) {
    if (a.decoupled) {
      at::_fused_adamw_({a.params[i]}, {a.grads[i]}, {a.exp_avgs[i]}, {a.exp_avg_sqs[i]}, {}, steps, a.lrs[i],
                        a.beta1, a.beta2, a.decays[i], a.eps, false, false);
    } else {
      at::_fused_adam_({a.params[i]}, {a.grads[i]}, {a.exp_avgs[i]}, {a.exp_avg_sqs[i]}, {}, steps, a.lrs[i],
                       a.beta1, a.beta2, a.decays[i], a.eps, false, false);
    }
  }
}

// Whether every tensor is contiguous (count_step reads and writes them through plain pointers).
bool all_contiguous(std::initializer_list<const Tensor*> tensors) {
  return std::all_of(tensors.begin(), tensors.end(), [](const Tensor* t) { return t->is_contiguous(); });
}

// The step counter's + 1 and the loss sums' + losses x batch size: on the numbers themselves where all are
// float (two ATen dispatches a step saved; a sum may round in its last bit unlike add_'s), else with add_.
void count_step(const Tensor& step_count, const Tensor& sums, const Tensor& losses, int64_t n) {
  const bool floats = step_count.scalar_type() == at::kFloat && step_count.numel() == 1 &&
                      sums.scalar_type() == at::kFloat && losses.scalar_type() == at::kFloat &&
                      sums.numel() == losses.numel() && all_contiguous({&sums, &losses});
  if (!floats) {
    step_count.add_(1);
    sums.add_(losses, n);
    return;
  }
  *step_count.mutable_data_ptr<float>() += 1.0f;
  float* total = sums.mutable_data_ptr<float>();
  const float* loss = losses.const_data_ptr<float>();
  for (int64_t i = 0; i < sums.numel(); ++i) total[i] += loss[i] * static_cast<float>(n);
}

// Batches [begin, end) of an epoch: for each, gather the batch, step, and update every parameter with
// torch's fused Adam (or AdamW). Returns (the last batch's losses, the index of the first batch whose
// weighted loss is not finite, or -1); a non-finite batch is not applied. `sums` accumulates losses x
// batch size. `threads`: torch's intra-op threads for these batches, the update's included (0: as they are).
std::tuple<Tensor, int64_t> train_batches(
    int64_t kind, const Tensor& x_all, const Tensor& y_all, const std::vector<Tensor>& batches, int64_t begin,
    int64_t end, const std::vector<Tensor>& p, std::vector<Tensor>& g, const Tensor& weights,
    const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets, bool bf16,
    const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avgs,
    const std::vector<Tensor>& exp_avg_sqs, const Tensor& step_count, const std::vector<double>& lrs,
    const std::vector<double>& decays, bool decoupled, double beta1, double beta2, double eps, Tensor sums,
    int64_t threads) {
  const ThreadsFor use(threads);
  const AdamParts adam{params, grads, exp_avgs, exp_avg_sqs, lrs, decays, decoupled, beta1, beta2, eps};
  Tensor losses;
  double total = 0;
  for (int64_t b = begin; b < end; ++b) {
    const Tensor& idx = batches[b];
    losses = step(kind, x_all.index_select(0, idx), y_all.index_select(0, idx), p, g, weights, kinds, offsets, bf16, total);
    if (!std::isfinite(total)) return {losses, b};
    count_step(step_count, sums, losses, idx.size(0));
    torch_update(adam, step_count);
  }
  return {losses, -1};
}

}  // namespace

// The CNNs' max-pooling, from native_pool.cpp (built into this module).
bool pool_supported();
bool pool_simd();
std::vector<Tensor> max_pool2x2(const Tensor& x);
Tensor max_pool2x2_backward(const Tensor& grad_out, const Tensor& arg, int64_t h, int64_t w);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "step",
      [](int64_t kind, const Tensor& x, const Tensor& y, const std::vector<Tensor>& p, std::vector<Tensor>& g,
         const Tensor& weights, const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets, bool bf16) {
        double total = 0;
        return step(kind, x, y, p, g, weights, kinds, offsets, bf16, total);
      },
      "one training step's losses and gradients (see mtl_core/native/native_steps.cpp)");
  m.def("train_batches", &train_batches, "batches [begin, end) of an epoch: step and fused Adam each");
  m.def("pool_supported", &pool_supported, "whether runs use the C++ max-pool here (AVX-512, or the portable twin forced)");
  m.def("pool_simd", &pool_simd, "whether a max-pool call now runs the AVX-512 twin (not MTL_NATIVE_ISA=portable)");
  m.def("max_pool2x2", &max_pool2x2, "2x2 max-pool of a channels_last batch: (out, which of the 4 won)");
  m.def("max_pool2x2_backward", &max_pool2x2_backward, "the input's gradient from the output's and `arg`");
}
