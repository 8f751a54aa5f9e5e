// bfloat16 <-> float on raw 16-bit storage, shared by CPU and CUDA code so neither needs torch's or CUDA's bf16 types.
// Wrapped in an anonymous namespace: each translation unit (e.g. the AVX-512 one) keeps its own copy, so the linker never
// swaps in a copy compiled for another instruction set.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace gpt3d {
namespace {

GPT3D_HD float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// Round to nearest even, as torch does; NaN stays a (quiet) NaN.
GPT3D_HD uint16_t float_to_bf16(float f) {
#if defined(__CUDA_ARCH__)
  uint32_t bits = __float_as_uint(f);
#else
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
#endif
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// Uniform load/store so kernels are written once for float and bf16 storage.
GPT3D_HD float load_as_float(const float* p, int64_t i) { return p[i]; }
GPT3D_HD float load_as_float(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
GPT3D_HD void store_from_float(float* p, int64_t i, float v) { p[i] = v; }
GPT3D_HD void store_from_float(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

}  // namespace
}  // namespace gpt3d
