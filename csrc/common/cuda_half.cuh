// float16 storage for the CUDA kernels (CUDA only: the CPU kernels take float32 and bfloat16). Adds __half overloads
// of the uniform loads/stores of bf16.h and the 4-wide packs of cuda_pack.cuh, so a kernel templated on its storage
// type runs on __half unchanged; the math stays fp32 in registers, rounded once to nearest on store.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_pack.cuh"

namespace gpt3d {
namespace {

__device__ __forceinline__ float load_as_float(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void store_from_float(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

__device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}
__device__ __forceinline__ uint32_t float_to_half_bits(float f) {
  return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(f)));
}

// p must be 8-byte aligned (callers check `pack_aligned`, which uses sizeof(__half) == 2).
__device__ __forceinline__ Float4 load4(const __half* p) {
  const uint2 q = *reinterpret_cast<const uint2*>(p);
  return {{half_bits_to_float(q.x), half_bits_to_float(q.x >> 16), half_bits_to_float(q.y),
           half_bits_to_float(q.y >> 16)}};
}
__device__ __forceinline__ void store4(__half* p, const Float4& f) {
  uint2 q;
  q.x = float_to_half_bits(f.v[0]) | (float_to_half_bits(f.v[1]) << 16);
  q.y = float_to_half_bits(f.v[2]) | (float_to_half_bits(f.v[3]) << 16);
  *reinterpret_cast<uint2*>(p) = q;
}

}  // namespace
}  // namespace gpt3d
