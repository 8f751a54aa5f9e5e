// Four-element vectorised global loads/stores for float and bf16 (uint16_t) storage, fp32 in registers (torch-free).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/bf16.h"

namespace gpt3d {
namespace {

struct Float4 {
  float v[4];
};

// p must be 16-byte aligned for float, 8-byte aligned for bf16 (callers check `pack_aligned`).
__device__ __forceinline__ Float4 load4(const float* p) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  return {{q.x, q.y, q.z, q.w}};
}
__device__ __forceinline__ Float4 load4(const uint16_t* p) {
  const uint2 q = *reinterpret_cast<const uint2*>(p);
  return {{bf16_to_float(static_cast<uint16_t>(q.x & 0xffffu)), bf16_to_float(static_cast<uint16_t>(q.x >> 16)),
           bf16_to_float(static_cast<uint16_t>(q.y & 0xffffu)), bf16_to_float(static_cast<uint16_t>(q.y >> 16))}};
}
__device__ __forceinline__ void store4(float* p, const Float4& f) {
  *reinterpret_cast<float4*>(p) = make_float4(f.v[0], f.v[1], f.v[2], f.v[3]);
}
__device__ __forceinline__ void store4(uint16_t* p, const Float4& f) {
  uint2 q;
  q.x = static_cast<uint32_t>(float_to_bf16(f.v[0])) | (static_cast<uint32_t>(float_to_bf16(f.v[1])) << 16);
  q.y = static_cast<uint32_t>(float_to_bf16(f.v[2])) | (static_cast<uint32_t>(float_to_bf16(f.v[3])) << 16);
  *reinterpret_cast<uint2*>(p) = q;
}

// True when every row of `cols` elements starting at `base` can be read in aligned packs of 4.
template <class T>
__host__ __device__ inline bool pack_aligned(const T* base, long long cols) {
  return cols % 4 == 0 && reinterpret_cast<uintptr_t>(base) % (4 * sizeof(T)) == 0;
}

}  // namespace
}  // namespace gpt3d
