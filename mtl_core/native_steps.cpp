// The MLPs' hand-written training step and batch loop in C++ (built by mtl_core/native.py).
//
// The same maths as the Python steps in mtl_core/fastpath.py, called without Python in between: at batch
// 128 a step is about 40 small operations, and Python's cost per operation (2-3 us) was a quarter of the
// step. Most are ATen's; on CPUs with AVX-512 the small ones whose dispatch cost more than their
// arithmetic are this module's own (native_elementwise.cpp, native_matmul.cpp, native_adam.cpp). The first
// layer's two bf16 products (half the step) stay with ATen's oneDNN: about 80 % of the GEMM probe's bf16
// peak, and a hand-written AVX512-BF16 kernel measured 62 us against its 65-67 us, not worth its code.
// tests/test_native.py checks the gradients against autograd and whole epochs against the Python loop.
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
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "native_kernels.h"

using at::Tensor;

namespace {

enum Kind : int64_t { HARD = 0, STL = 1, CROSS_STITCH = 2, MMOE = 3 };

// The step's element-wise work on the heads (K x B logits, K x C x 32 folded weights: a few hundred to a
// few thousand values) as plain loops: there one ATen call per operation (dispatch, an allocation) cost
// more than the arithmetic. The (rows, B) activations stay with ATen's vectorised kernels, which beat a plain loop.

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

// The first layer's bf16 forms, kept across a chunk of steps by the batch loop when its Adam update is
// native_adam.cpp's: the weights' bf16 copy that update writes (so no step casts them), and the last
// step's weight gradient as the bf16 product gave it (that update reads it; the loop copies it into the
// fp32 gradient buffer when the chunk ends). Both buffers come from the caller, made once per run, so no
// chunk or step allocates them anew.
struct Bf16FirstLayer {
  Tensor weights, grad;
  bool has_grad = false;
};

// The first layer's product in bf16, (rows, 784) x (784, B), rounded once. `kept`: the bf16 forms above, or
// null (the weights cast here).
Tensor bf16_product(const Tensor& w1, const Tensor& x, const Bf16FirstLayer* kept) {
  return at::mm(kept ? kept->weights : w1.to(at::kBFloat16), x.t());
}

// The 784-wide first layer: in bf16 the product as above and the bias added in fp32; else all in fp32.
Tensor first_layer(const Tensor& w1, const Tensor& b1, const Tensor& x, bool bf16, const Bf16FirstLayer* kept) {
  if (!bf16) return at::addmm(b1, w1, x.t());
  return at::add(b1, bf16_product(w1, x, kept));
}

// Its weight gradient d (rows, B) x x (B, 784) into `out`, in the forward's precision (into `kept->grad`
// instead, in bf16, where the loop keeps it).
void first_layer_grad(Tensor& out, const Tensor& d, const Tensor& x, bool bf16, Bf16FirstLayer* kept) {
  if (!bf16) {
    at::mm_out(out, d, x);
  } else if (kept) {
    at::mm_out(kept->grad, d.to(at::kBFloat16), x);
    kept->has_grad = true;
  } else {
    out.copy_(at::mm(d.to(at::kBFloat16), x));
  }
}

// Whether every tensor is contiguous: what the own kernels below need (else the step calls ATen).
bool all_contiguous(std::initializer_list<const Tensor*> tensors) {
  return std::all_of(tensors.begin(), tensors.end(), [](const Tensor* t) { return t->is_contiguous(); });
}

// The first layer and its ReLU. With `simd` (AVX-512, float parameters) the bf16 product's bias and ReLU are
// one pass (native_elementwise.cpp), the same values as first_layer then clamp_min_.
Tensor first_layer_relu(const Tensor& w1, const Tensor& b1, const Tensor& x, bool bf16, const Bf16FirstLayer* kept,
                        bool simd) {
  if (!bf16 || !simd || !b1.is_contiguous()) return first_layer(w1, b1, x, bf16, kept).clamp_min_(0);
  const Tensor product = bf16_product(w1, x, kept).contiguous();
  Tensor out = at::empty(product.sizes(), b1.options());
  mtl::bias_relu(static_cast<const uint16_t*>(product.const_data_ptr()), b1.const_data_ptr<float>(),
                 out.mutable_data_ptr<float>(), product.size(0), product.size(1));
  return out;
}

// The cross-stitch mixing of the columns' activations h (C, width, B) by a (C, C), or by a^T where
// `transpose`: a product, or with `simd` native_elementwise.cpp's loop.
Tensor mix(const Tensor& a, const Tensor& h, bool transpose, bool simd) {
  const int64_t c = h.size(0);
  if (!simd || !all_contiguous({&a, &h}))
    return at::mm(transpose ? a.t() : a, h.view({c, -1})).view(h.sizes());
  Tensor out = at::empty(h.sizes(), h.options());
  mtl::mix_columns(a.const_data_ptr<float>(), h.const_data_ptr<float>(), out.mutable_data_ptr<float>(), c,
                   h.numel() / c, transpose);
  return out;
}

// The mixing matrix's gradient from the mixed activations' gradient d and the activations h, into g (C, C).
void mix_grad(Tensor& g, const Tensor& d, const Tensor& h, bool simd) {
  const int64_t c = h.size(0);
  if (!simd || !all_contiguous({&g, &d, &h})) {
    at::mm_out(g, d.view({c, -1}), h.view({c, -1}).t());
    return;
  }
  mtl::mix_gradient(d.const_data_ptr<float>(), h.const_data_ptr<float>(), g.mutable_data_ptr<float>(), c,
                    h.numel() / c);
}

// The second layer per column (or expert), w2 (C, 32, 64) on h (C, 64, B): relu(b2 + w2 x h); with `simd`
// native_matmul.cpp's products, else ATen's batched ones.
Tensor second_layer_relu(const Tensor& w2, const Tensor& b2, const Tensor& h, bool simd) {
  if (!simd || !all_contiguous({&w2, &b2, &h}))
    return at::baddbmm(b2, w2, h).clamp_min_(0);
  const int64_t c = w2.size(0), rows = w2.size(1), width = w2.size(2), n = h.size(2);
  Tensor out = at::empty({c, rows, n}, h.options());
  const float *w = w2.const_data_ptr<float>(), *b = b2.const_data_ptr<float>(), *in = h.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < c; ++i)
    mtl::matmul(w + i * rows * width, in + i * width * n, b + i * rows, o + i * rows * n, rows, width, n, true);
  return out;
}

// Its input's gradient w2^T x d2 (C, 64, B), and its weights' d2 x h^T into g2 (C, 32, 64).
Tensor second_layer_input_grad(const Tensor& w2, const Tensor& d2, bool simd) {
  if (!simd || !all_contiguous({&w2, &d2})) return at::bmm(w2.transpose(1, 2), d2);
  const int64_t c = w2.size(0), rows = w2.size(1), width = w2.size(2), n = d2.size(2);
  Tensor out = at::empty({c, width, n}, d2.options());
  const float *w = w2.const_data_ptr<float>(), *d = d2.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < c; ++i) mtl::matmul_tn(w + i * rows * width, d + i * rows * n, o + i * width * n, width, rows, n);
  return out;
}

void second_layer_weight_grad(Tensor& g2, const Tensor& d2, const Tensor& h, bool simd) {
  if (!simd || !all_contiguous({&g2, &d2, &h})) {
    at::bmm_out(g2, d2, h.transpose(1, 2));
    return;
  }
  const int64_t c = g2.size(0), rows = g2.size(1), width = g2.size(2), n = d2.size(2);
  const float *d = d2.const_data_ptr<float>(), *in = h.const_data_ptr<float>();
  float* g = g2.mutable_data_ptr<float>();
  for (int64_t i = 0; i < c; ++i) mtl::matmul_nt(d + i * rows * n, in + i * width * n, g + i * rows * width, rows, width, n);
}

// The heads' three products, (K, C*32) x (C*32, B) and its two gradients: a x b [+ bias (m, 1)], a^T x b, and
// a x b^T into `out`; with `simd` native_matmul.cpp's, else ATen's (about 2.4 us a call at these sizes,
// mostly dispatch; with the in-place counters below, 1.01-1.05x per epoch on one thread, side by side).
Tensor product(const Tensor& a, const Tensor& b, const Tensor& bias, bool simd) {
  if (!simd || !all_contiguous({&a, &b, &bias})) return at::addmm(bias, a, b);
  Tensor out = at::empty({a.size(0), b.size(1)}, b.options());
  mtl::matmul(a.const_data_ptr<float>(), b.const_data_ptr<float>(), bias.const_data_ptr<float>(),
              out.mutable_data_ptr<float>(), a.size(0), a.size(1), b.size(1), false);
  return out;
}

Tensor product_tn(const Tensor& a, const Tensor& b, bool simd) {
  if (!simd || !all_contiguous({&a, &b})) return at::mm(a.t(), b);
  Tensor out = at::empty({a.size(1), b.size(1)}, b.options());
  mtl::matmul_tn(a.const_data_ptr<float>(), b.const_data_ptr<float>(), out.mutable_data_ptr<float>(), a.size(1),
                 a.size(0), b.size(1));
  return out;
}

void product_nt(Tensor& out, const Tensor& a, const Tensor& b, bool simd) {
  if (!simd || !all_contiguous({&out, &a, &b})) {
    at::mm_out(out, a, b.t());
    return;
  }
  mtl::matmul_nt(a.const_data_ptr<float>(), b.const_data_ptr<float>(), out.mutable_data_ptr<float>(), a.size(0),
                 b.size(0), a.size(1));
}

// A layer's gradient through its ReLU (output r), in place, with its bias's gradient (the batch's sum) into
// g_bias: threshold_backward and sum_out, or with `simd` native_elementwise.cpp's one pass.
void relu_grad(Tensor& d, const Tensor& r, Tensor& g_bias, bool simd) {
  if (!simd || !all_contiguous({&d, &r, &g_bias})) {
    d = at::threshold_backward(d, r, 0);
    Tensor sums = g_bias.view({g_bias.numel(), 1});  // the same memory as g_bias, whatever its shape
    at::sum_out(sums, d.view({g_bias.numel(), -1}), {1}, true);
    return;
  }
  mtl::relu_grad(d.mutable_data_ptr<float>(), r.const_data_ptr<float>(), g_bias.mutable_data_ptr<float>(),
                 g_bias.numel(), d.numel() / g_bias.numel());
}

// Rows `idx` of `all` as index_select(all, 0, idx) gives them, the rows four places ahead prefetched: the
// training set (94 MB in bf16) is far past the caches and each of a batch's random rows starts with a trip
// to memory. Measured on one thread between first-layer products, as in a step: 17-21 us for a batch of
// 128 rows against index_select's 27-28 us (a whole cross-stitch step is about 250 us).
Tensor gather_rows(const Tensor& all, const Tensor& idx) {
  if (all.dim() == 0 || !all.is_contiguous() || idx.dim() != 1 || idx.scalar_type() != at::kLong ||
      !idx.is_contiguous() || all.size(0) == 0)
    return all.index_select(0, idx);
  const int64_t n = idx.numel(), rows = all.size(0), bytes = all.numel() / rows * all.element_size();
  const int64_t* index = idx.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(index[i] >= 0 && index[i] < rows, "index ", index[i], " is out of range for ", rows, " rows");
  std::vector<int64_t> sizes = all.sizes().vec();
  sizes[0] = n;
  Tensor out = at::empty(sizes, all.options());
  const char* src = static_cast<const char*>(all.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  constexpr int64_t ahead = 4;
  const auto prefetch = [&](int64_t i) {
    const char* row = src + index[i] * bytes;
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o, 0, 3);
  };
  // On the loop's threads (two threads' loads in flight: index_select's way, which two threads need)
  at::parallel_for(0, n, 32, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < std::min(lo + ahead, hi); ++i) prefetch(i);
    for (int64_t i = lo; i < hi; ++i) {
      if (i + ahead < hi) prefetch(i + ahead);
      std::memcpy(dst + i * bytes, src + index[i] * bytes, bytes);
    }
  });
  return out;
}

// MMoE (E experts, a softmax gate per task), as fastpath.MMoEStep but feature-major:
//   w1 (E*64 + T*E, 784): the experts' first layers, then every task's gate   b1 (E*64 + T*E, 1)
//   w2 (E, 32, 64)  b2 (E, 32, 1)  wh (K, 32)  bh (K, 1)
// Head t reads mixed_t = sum_e gate_t[e] * expert_e; the gates' gradient goes back through their softmax.
Tensor mmoe_step(const Tensor& x, const Tensor& y, const std::vector<Tensor>& p, std::vector<Tensor>& g,
                 const Tensor& weights, const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets,
                 bool bf16, Bf16FirstLayer* kept, double& total) {
  const Tensor &w1 = p[0], &b1 = p[1], &w2 = p[2], &b2 = p[3], &wh = p[4], &bh = p[5];
  const int64_t n = x.size(0), e = w2.size(0), h1 = w2.size(2), h2 = w2.size(1);
  const int64_t k = wh.size(0), t = static_cast<int64_t>(kinds.size());
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == t + 1 && offsets[t] == k, "the heads' offsets do not fit");
  const Tensor yc = y.contiguous();
  Tensor losses = at::empty({t}, wh.options());
  AT_DISPATCH_FLOATING_TYPES(wh.scalar_type(), "mmoe_step", [&] {
    const bool simd = std::is_same_v<scalar_t, float> && mtl::avx512_supported();
    Tensor a = first_layer(w1, b1, x, bf16, kept);
    Tensor r1 = a.narrow(0, 0, e * h1).clamp_min(0).view({e, h1, n});                // (E, 64, B)
    Tensor gate = at::softmax(a.narrow(0, e * h1, t * e).view({t, e, n}), 1);         // (T, E, B)
    Tensor r2 = second_layer_relu(w2, b2, r1, simd);                                   // (E, 32, B)
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
    relu_grad(d2, r2, g[3], simd);
    second_layer_weight_grad(g[2], d2, r1, simd);
    Tensor d1 = at::threshold_backward(second_layer_input_grad(w2, d2, simd), r1, 0);  // (E, 64, B)
    Tensor d_a = at::cat({d1.view({e * h1, n}), d_logits.view({t * e, n})}, 0);       // (E*64 + T*E, B)
    at::sum_out(g[1], d_a, {1}, true);
    first_layer_grad(g[0], d_a, x, bf16, kept);
  });
  return losses;
}

// One step: the task losses (T,), and every gradient of sum_t weight_t * loss_t written into `g`;
// `total` gets that weighted sum. x (B, 784) in the first layer's dtype (bfloat16 when `bf16`), y (B, T)
// the targets in the parameters' dtype; `kinds` (T,) each task's HeadKind, `offsets` (T + 1) its logits.
Tensor step(int64_t kind, const Tensor& x, const Tensor& y, const std::vector<Tensor>& p, std::vector<Tensor>& g,
            const Tensor& weights, const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets, bool bf16,
            Bf16FirstLayer* kept, double& total) {
  if (kind == MMOE) return mmoe_step(x, y, p, g, weights, kinds, offsets, bf16, kept, total);
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
    const bool simd = std::is_same_v<scalar_t, float> && mtl::avx512_supported();
    Tensor r1 = first_layer_relu(w1, b1, x, bf16, kept, simd).view({c, h1, n});  // (C, 64, B)
    Tensor m1 = mixing ? mix(p[6], r1, false, simd) : r1;
    Tensor r2 = second_layer_relu(w2, b2, m1, simd);  // (C, 32, B)
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
    Tensor z = product(heads, r2_all, bh, simd);  // (K, B)
    Tensor dz = at::empty({k, n}, wh.options());
    total = head_losses(z.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(),
                        weights.const_data_ptr<scalar_t>(), kinds, offsets, losses.mutable_data_ptr<scalar_t>(),
                        dz.mutable_data_ptr<scalar_t>(), g[5].mutable_data_ptr<scalar_t>(), n);
    Tensor g_heads = kind == HARD ? g[4] : at::empty({k, c * h2}, wh.options());
    product_nt(g_heads, dz, r2_all, simd);
    Tensor d2 = product_tn(heads, dz, simd).view({c, h2, n});
    relu_grad(d2, r2, g[3], simd);
    second_layer_weight_grad(g[2], d2, m1, simd);
    Tensor d1 = second_layer_input_grad(w2, d2, simd);  // (C, 64, B), at the mixed features
    if (mixing) {  // d1 is the mixed features' gradient: to a1's and to the unmixed features'
      mix_grad(g[6], d1, r1, simd);
      d1 = mix(p[6], d1, true, simd);
    }
    relu_grad(d1, r1, g[1], simd);
    d1 = d1.view({-1, n});  // (C*64, B)
    first_layer_grad(g[0], d1, x, bf16, kept);
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

// One update with native_adam.cpp's kernel on `threads` threads, step number `step`. Where a part holds
// the first layer's weights and `kept` is given, that stretch reads its bf16 gradient and writes its bf16 copy.
void native_update(const AdamParts& a, double step, const Tensor& w1, Bf16FirstLayer* kept, int threads) {
  const float* w_lo = w1.const_data_ptr<float>();
  const float* w_hi = w_lo + w1.numel();
  for (size_t i = 0; i < a.params.size(); ++i) {
    const mtl::AdamCoefficients c =
        mtl::adam_coefficients(step, a.lrs[i], a.beta1, a.beta2, a.decays[i], a.eps, a.decoupled);
    float* p = a.params[i].mutable_data_ptr<float>();
    float* g = a.grads[i].mutable_data_ptr<float>();
    float* m = a.exp_avgs[i].mutable_data_ptr<float>();
    float* v = a.exp_avg_sqs[i].mutable_data_ptr<float>();
    const int64_t n = a.params[i].numel();
    // [0, lo) and [hi, n) with the fp32 gradient; [lo, hi), the first layer's stretch, with the bf16 one.
    int64_t lo = n, hi = n;
    if (kept) {
      lo = std::clamp<int64_t>(w_lo - p, 0, n);
      hi = std::clamp<int64_t>(w_hi - p, 0, n);
    }
    if (lo > 0) mtl::adam_update(p, g, false, m, v, nullptr, lo, c, threads);
    if (hi > lo) {
      const auto* g16 = static_cast<const uint16_t*>(kept->grad.const_data_ptr()) + (p + lo - w_lo);
      auto* copy = static_cast<uint16_t*>(kept->weights.mutable_data_ptr()) + (p + lo - w_lo);
      mtl::adam_update(p + lo, g16, true, m + lo, v + lo, copy, hi - lo, c, threads);
    }
    if (n > hi) mtl::adam_update(p + hi, g + hi, false, m + hi, v + hi, nullptr, n - hi, c, threads);
  }
}

// The same update with torch's fused kernel, one call per part.
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

// Whether the update can be native_adam.cpp's: the CPU has it, and every part is contiguous float32.
bool native_update_fits(const AdamParts& a, const Tensor& w1) {
  if (!mtl::avx512_supported() || w1.scalar_type() != at::kFloat || !w1.is_contiguous()) return false;
  for (const auto* list : {&a.params, &a.grads, &a.exp_avgs, &a.exp_avg_sqs})
    for (const Tensor& t : *list)
      if (t.scalar_type() != at::kFloat || !t.is_contiguous()) return false;
  return true;
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
// Adam (or AdamW): native_adam.cpp's kernel where `own_adam` and `native_update_fits` (then, under bf16,
// with `first_layer_bf16`: two bf16 buffers of the first layer's shape, see Bf16FirstLayer), else torch's
// fused one. Returns (the last batch's losses, the index of the first batch whose weighted loss is not
// finite, or -1); a non-finite batch is not applied. `sums` accumulates losses x batch size. `threads`:
// torch's intra-op threads for these batches, the update's included (0: as they are). (The update alone
// on two threads while the products ran on one was 4 % faster in the machine's quiet spells and 4 %
// slower in its busy ones, when the other core is shared: it follows the loop's pick instead.)
std::tuple<Tensor, int64_t> train_batches(
    int64_t kind, const Tensor& x_all, const Tensor& y_all, const std::vector<Tensor>& batches, int64_t begin,
    int64_t end, const std::vector<Tensor>& p, std::vector<Tensor>& g, const Tensor& weights,
    const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets, bool bf16,
    const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avgs,
    const std::vector<Tensor>& exp_avg_sqs, const Tensor& step_count, const std::vector<double>& lrs,
    const std::vector<double>& decays, bool decoupled, double beta1, double beta2, double eps, bool own_adam,
    const std::vector<Tensor>& first_layer_bf16, Tensor sums, int64_t threads) {
  const ThreadsFor use(threads);
  const AdamParts adam{params, grads, exp_avgs, exp_avg_sqs, lrs, decays, decoupled, beta1, beta2, eps};
  const bool native = own_adam && native_update_fits(adam, p[0]);
  Bf16FirstLayer bf16_layer;
  Bf16FirstLayer* kept = nullptr;
  if (native && bf16) {
    TORCH_CHECK(first_layer_bf16.size() == 2, "the bf16 first layer's two buffers are missing");
    for (const Tensor& t : first_layer_bf16)
      TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.sizes() == p[0].sizes(),
                  "a bf16 first-layer buffer of the wrong kind");
    bf16_layer.weights = first_layer_bf16[0];
    bf16_layer.grad = first_layer_bf16[1];
    bf16_layer.weights.copy_(p[0]);  // the weights may have changed between chunks (a reload)
    kept = &bf16_layer;
  }
  // The kept gradient into the fp32 buffer, where the Python side (and a diverged run's report) reads it.
  const auto flush = [&] {
    if (kept && kept->has_grad) g[0].copy_(kept->grad);
  };
  double step_number = native ? step_count.item<double>() : 0;
  Tensor losses;
  double total = 0;
  for (int64_t b = begin; b < end; ++b) {
    const Tensor& idx = batches[b];
    losses = step(kind, gather_rows(x_all, idx), gather_rows(y_all, idx), p, g, weights, kinds, offsets, bf16, kept,
                  total);
    if (!std::isfinite(total)) {
      flush();
      return {losses, b};
    }
    count_step(step_count, sums, losses, idx.size(0));
    if (native) {
      native_update(adam, ++step_number, p[0], kept, at::get_num_threads());
    } else {
      torch_update(adam, step_count);
    }
  }
  flush();
  return {losses, -1};
}

}  // namespace

// The CNNs' max-pooling, from native_pool.cpp (built into this module).
bool pool_supported();
std::vector<Tensor> max_pool2x2(const Tensor& x);
Tensor max_pool2x2_backward(const Tensor& grad_out, const Tensor& arg, int64_t h, int64_t w);

// The loop's Adam update on tensors, from native_adam.cpp (for tests).
namespace mtl {
void adam_step(Tensor p, const Tensor& g, Tensor m, Tensor v, const c10::optional<Tensor>& copy, double step,
               double lr, double beta1, double beta2, double weight_decay, double eps, bool decoupled, int64_t threads);
// The second layer's products on tensors, from native_matmul.cpp (for tests).
Tensor small_matmul(const Tensor& a, const Tensor& b, const c10::optional<Tensor>& bias, bool relu,
                    const std::string& form);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "step",
      [](int64_t kind, const Tensor& x, const Tensor& y, const std::vector<Tensor>& p, std::vector<Tensor>& g,
         const Tensor& weights, const std::vector<int64_t>& kinds, const std::vector<int64_t>& offsets, bool bf16) {
        double total = 0;
        return step(kind, x, y, p, g, weights, kinds, offsets, bf16, nullptr, total);
      },
      "one training step's losses and gradients (see mtl_core/native_steps.cpp)");
  m.def("train_batches", &train_batches, "batches [begin, end) of an epoch: step and fused Adam each");
  m.def("avx512_supported", &mtl::avx512_supported, "whether this CPU runs the loop's own kernels (AVX-512)");
  m.def("adam_step", &mtl::adam_step, "one Adam (decoupled: AdamW) update as the C++ loop makes it");
  m.def(
      "relu_grad",
      [](const Tensor& d, const Tensor& r) {
        TORCH_CHECK(d.dim() == 2 && d.sizes() == r.sizes(), "relu_grad: d and r of one (rows, n) shape");
        Tensor out = d.contiguous().clone(), sums = at::empty({d.size(0), 1}, d.options());
        relu_grad(out, r.contiguous(), sums, d.scalar_type() == at::kFloat && mtl::avx512_supported());
        return std::make_tuple(out, sums);
      },
      "a gradient through a ReLU with output r, and its rows' sums, as the step makes them");
  m.def("gather_rows", &gather_rows, "rows idx of a tensor, as index_select gives them (the loop's batch gather)");
  m.def("small_matmul", &mtl::small_matmul, "the second layer's products as the step makes them (form nn, tn, nt)");
  m.def("pool_supported", &pool_supported, "whether this CPU runs the C++ max-pool (x86-64 with AVX-512)");
  m.def("max_pool2x2", &max_pool2x2, "2x2 max-pool of a channels_last batch: (out, which of the 4 won)");
  m.def("max_pool2x2_backward", &max_pool2x2_backward, "the input's gradient from the output's and `arg`");
}
