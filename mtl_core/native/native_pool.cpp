// The CNNs' 2x2 max-pooling (stride 2) on channels_last batches, forward and backward, in AVX-512
// (built by mtl_core/native/__init__.py into the same module as native_steps.cpp; used by mtl_core/models/cnn.py's _MaxPool2x2).
//
// Why: torch's CPU pooling keeps the position of each maximum as an int64 index (8 bytes per output,
// as large as a bf16 input) and its backward zero-fills the whole input gradient before scattering into
// it. This one keeps which of the four positions won as one byte, and its backward writes every input
// position once (the gradient where it won, 0 elsewhere), so it needs no fill: the CNN's step is
// 1.17-1.20x faster with it here. Results equal torch's bit for bit, ties and NaN included
// (tests/test_native_pool.py):
// torch scans the window in row order and takes a value when `v > max || isnan(v)`, and so does this.
//
// Two twins of the same loops: AVX-512 (F, BW, VL; x86-64 CPUs that have it, checked at run time) and a
// portable scalar one, which runs everywhere else and wherever MTL_NATIVE_ISA=portable is set (read at each
// call, so the tests run both on one machine). The channel count must be a multiple of 16 (32 and 64
// here), the height and width even (28 and 14).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MTL_X86 1
#include <immintrin.h>
#define MTL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

using at::Tensor;

namespace {

// Rows of work per thread at least: a row is w/2 outputs x c channels (a few KiB).
constexpr int64_t GRAIN = 8;

#ifdef MTL_X86

// 16 channels at a time. A bf16 value is widened to float for the comparison, and the winner's own 16 bits
// are kept (a maximum is one of its inputs, never rounded).
MTL_AVX512 inline __m512 widen_bf16(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

MTL_AVX512 inline __mmask16 takes(__m512 v, __m512 best) {
  return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
}

// Calls body(win, o) for every 16 channels of every output position in output rows [begin, end) of the
// n * h/2: `o` is the output's offset, win[q] the input's at the window's q-th position in torch's scan
// order, (0, 0), (0, 1), (1, 0), (1, 1) (the same offsets serve the gradients).
template <typename Body>
MTL_AVX512 void each_window(int64_t h, int64_t w, int64_t c, int64_t begin, int64_t end, const Body& body) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t img = row / oh, y = row % oh;
    for (int64_t x = 0; x < ow; ++x) {
      const int64_t first = ((img * h + 2 * y) * w + 2 * x) * c;
      const int64_t o = (row * ow + x) * c;
      for (int64_t ch = 0; ch < c; ch += 16) {
        const int64_t win[4] = {first + ch, first + c + ch, first + w * c + ch, first + w * c + c + ch};
        body(win, o + ch);
      }
    }
  }
}

// The maximum of each window and which position held it (0..3 in a byte).
struct ForwardBf16 {
  const uint16_t* in;
  uint16_t* out;
  uint8_t* arg;
  MTL_AVX512 void operator()(const int64_t* win, int64_t o) const {
    __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + win[0]));
    __m512 best = widen_bf16(bits);
    __m128i which = _mm_setzero_si128();
    for (int q = 1; q < 4; ++q) {
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + win[q]));
      const __m512 v = widen_bf16(vb);
      const __mmask16 t = takes(v, best);
      best = _mm512_mask_blend_ps(t, best, v);
      bits = _mm256_mask_blend_epi16(t, bits, vb);
      which = _mm_mask_blend_epi8(t, which, _mm_set1_epi8(static_cast<char>(q)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + o), bits);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(arg + o), which);
  }
};

struct ForwardF32 {
  const float* in;
  float* out;
  uint8_t* arg;
  MTL_AVX512 void operator()(const int64_t* win, int64_t o) const {
    __m512 best = _mm512_loadu_ps(in + win[0]);
    __m128i which = _mm_setzero_si128();
    for (int q = 1; q < 4; ++q) {
      const __m512 v = _mm512_loadu_ps(in + win[q]);
      const __mmask16 t = takes(v, best);
      best = _mm512_mask_blend_ps(t, best, v);
      which = _mm_mask_blend_epi8(t, which, _mm_set1_epi8(static_cast<char>(q)));
    }
    _mm512_storeu_ps(out + o, best);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(arg + o), which);
  }
};

// The gradient of each output goes to the position that won; the other three get 0.
struct Backward16Bit {
  const uint16_t* grad;
  const uint8_t* arg;
  uint16_t* grad_in;
  MTL_AVX512 void operator()(const int64_t* win, int64_t o) const {
    const __m256i g = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grad + o));
    const __m128i which = _mm_loadu_si128(reinterpret_cast<const __m128i*>(arg + o));
    for (int q = 0; q < 4; ++q) {
      const __mmask16 won = _mm_cmpeq_epi8_mask(which, _mm_set1_epi8(static_cast<char>(q)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(grad_in + win[q]), _mm256_maskz_mov_epi16(won, g));
    }
  }
};

struct BackwardF32 {
  const float* grad;
  const uint8_t* arg;
  float* grad_in;
  MTL_AVX512 void operator()(const int64_t* win, int64_t o) const {
    const __m512 g = _mm512_loadu_ps(grad + o);
    const __m128i which = _mm_loadu_si128(reinterpret_cast<const __m128i*>(arg + o));
    for (int q = 0; q < 4; ++q) {
      const __mmask16 won = _mm_cmpeq_epi8_mask(which, _mm_set1_epi8(static_cast<char>(q)));
      _mm512_storeu_ps(grad_in + win[q], _mm512_maskz_mov_ps(won, g));
    }
  }
};

// All n * h/2 output rows on torch's threads. (The lambda calls each_window rather than holding the loop:
// a lambda does not inherit the AVX-512 target.)
template <typename Body>
void on_all_rows(int64_t n, int64_t h, int64_t w, int64_t c, const Body& body) {
  at::parallel_for(0, n * (h / 2), GRAIN, [&](int64_t b, int64_t e) { each_window(h, w, c, b, e, body); });
}

#endif  // MTL_X86

// The portable twin: the same scan, one channel at a time, in plain C++.
inline float as_float(float v) { return v; }
inline float as_float(uint16_t v) {  // bf16: the upper half of a float
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
void forward_portable(const T* in, T* out, uint8_t* arg, int64_t h, int64_t w, int64_t c, int64_t begin,
                      int64_t end) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t img = row / oh, y = row % oh;
    for (int64_t x = 0; x < ow; ++x) {
      const int64_t first = ((img * h + 2 * y) * w + 2 * x) * c, o = (row * ow + x) * c;
      const int64_t win[4] = {first, first + c, first + w * c, first + w * c + c};
      for (int64_t ch = 0; ch < c; ++ch) {
        T best_bits = in[win[0] + ch];
        float best = as_float(best_bits);
        uint8_t which = 0;
        for (int q = 1; q < 4; ++q) {
          const T v_bits = in[win[q] + ch];
          const float v = as_float(v_bits);
          if (v > best || std::isnan(v)) best = v, best_bits = v_bits, which = static_cast<uint8_t>(q);
        }
        out[o + ch] = best_bits;
        arg[o + ch] = which;
      }
    }
  }
}

template <typename T>
void backward_portable(const T* grad, const uint8_t* arg, T* grad_in, int64_t h, int64_t w, int64_t c,
                       int64_t begin, int64_t end) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t img = row / oh, y = row % oh;
    for (int64_t x = 0; x < ow; ++x) {
      const int64_t first = ((img * h + 2 * y) * w + 2 * x) * c, o = (row * ow + x) * c;
      const int64_t win[4] = {first, first + c, first + w * c, first + w * c + c};
      for (int64_t ch = 0; ch < c; ++ch)
        for (int q = 0; q < 4; ++q) grad_in[win[q] + ch] = arg[o + ch] == q ? grad[o + ch] : T(0);
    }
  }
}

// Whether this CPU runs the AVX-512 twin (F, BW and VL).
bool avx512() {
#ifdef MTL_X86
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

// Whether MTL_NATIVE_ISA=portable forces the portable twin (read at each call).
bool portable_forced() {
  const char* isa = std::getenv("MTL_NATIVE_ISA");
  return isa && std::string(isa) == "portable";
}

// Whether this call runs the AVX-512 twin: the CPU has it and the portable one is not forced.
bool simd() { return avx512() && !portable_forced(); }

void check_input(const Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, what, " must be a 4-D CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, what, " must be float32 or bfloat16");
  TORCH_CHECK(x.size(1) % 16 == 0, what, " needs a channel count that is a multiple of 16");
}

}  // namespace

// Whether runs should pool here: where the AVX-512 twin runs, or where the portable one is forced (the tests;
// on its own it is slower than torch's pooling, so a CPU without AVX-512 keeps torch's).
bool pool_supported() { return avx512() || portable_forced(); }
bool pool_simd() { return simd(); }

// (out, which position won as 0..3 in a byte), both (n, c, h/2, w/2) channels_last.
std::vector<Tensor> max_pool2x2(const Tensor& x) {
  check_input(x, "the input");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "the input must be channels_last");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(h % 2 == 0 && w % 2 == 0, "the input's height and width must be even");
  const auto layout = at::MemoryFormat::ChannelsLast;
  Tensor out = at::empty({n, c, h / 2, w / 2}, x.options().memory_format(layout));
  Tensor arg = at::empty({n, c, h / 2, w / 2}, x.options().dtype(at::kByte).memory_format(layout));
  uint8_t* a = arg.mutable_data_ptr<uint8_t>();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
#ifdef MTL_X86
  if (simd()) {
    if (bf16) {
      const auto* in = reinterpret_cast<const uint16_t*>(x.const_data_ptr());
      on_all_rows(n, h, w, c, ForwardBf16{in, reinterpret_cast<uint16_t*>(out.mutable_data_ptr()), a});
    } else {
      on_all_rows(n, h, w, c, ForwardF32{x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), a});
    }
    return {out, arg};
  }
#endif
  at::parallel_for(0, n * (h / 2), GRAIN, [&](int64_t b, int64_t e) {
    if (bf16) {
      forward_portable(reinterpret_cast<const uint16_t*>(x.const_data_ptr()),
                       reinterpret_cast<uint16_t*>(out.mutable_data_ptr()), a, h, w, c, b, e);
    } else {
      forward_portable(x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), a, h, w, c, b, e);
    }
  });
  return {out, arg};
}

// The input's gradient (n, c, h, w) channels_last from the output's and `arg` of the forward.
Tensor max_pool2x2_backward(const Tensor& grad_out, const Tensor& arg, int64_t h, int64_t w) {
  check_input(grad_out, "the gradient");
  const auto layout = at::MemoryFormat::ChannelsLast;
  const Tensor g = grad_out.contiguous(layout);
  const int64_t n = g.size(0), c = g.size(1);
  TORCH_CHECK(arg.scalar_type() == at::kByte && arg.sizes() == g.sizes() && arg.is_contiguous(layout),
              "`arg` must be the forward's (same shape as the gradient, uint8, channels_last)");
  TORCH_CHECK(h == 2 * g.size(2) && w == 2 * g.size(3), "the input was not twice the output's size");
  Tensor grad_in = at::empty({n, c, h, w}, g.options().memory_format(layout));
  const uint8_t* a = arg.const_data_ptr<uint8_t>();
  const bool bf16 = g.scalar_type() == at::kBFloat16;
#ifdef MTL_X86
  if (simd()) {
    if (bf16) {
      const auto* go = reinterpret_cast<const uint16_t*>(g.const_data_ptr());
      on_all_rows(n, h, w, c, Backward16Bit{go, a, reinterpret_cast<uint16_t*>(grad_in.mutable_data_ptr())});
    } else {
      on_all_rows(n, h, w, c, BackwardF32{g.const_data_ptr<float>(), a, grad_in.mutable_data_ptr<float>()});
    }
    return grad_in;
  }
#endif
  at::parallel_for(0, n * (h / 2), GRAIN, [&](int64_t b, int64_t e) {
    if (bf16) {
      backward_portable(reinterpret_cast<const uint16_t*>(g.const_data_ptr()), a,
                        reinterpret_cast<uint16_t*>(grad_in.mutable_data_ptr()), h, w, c, b, e);
    } else {
      backward_portable(g.const_data_ptr<float>(), a, grad_in.mutable_data_ptr<float>(), h, w, c, b, e);
    }
  });
  return grad_in;
}
