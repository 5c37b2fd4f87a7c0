// What the AVX-512 kernels share (native_adam.cpp, native_elementwise.cpp, native_matmul.cpp,
// native_pool.cpp): whether they can be compiled at all (MTL_X86: x86-64 with GCC or Clang), the attribute
// that compiles a function for AVX-512 F, BW and VL (whether the CPU has them is asked at run time,
// mtl::avx512_supported), a loop's lane mask and the widening of bf16 to float.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MTL_X86 1
#include <immintrin.h>
#define MTL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace mtl {

// The first `left` of 16 lanes (all 16 when 16 or more are left).
MTL_AVX512 inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// 16 bf16 values as floats, exactly: a bf16 value is the upper half of a float.
MTL_AVX512 inline __m512 widen_bf16(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

}  // namespace mtl

#endif  // MTL_X86
