// Warp and block reductions for the CUDA kernels (torch-free). Blocks are 1-D with blockDim.x a multiple of 32, <= 1024.
#pragma once
#include <cuda_runtime.h>

namespace gpt3d {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread of the block gets the result. `scratch` holds 32 floats of shared memory; it may be reused after the
// call returns (the trailing barrier protects it).
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float identity = kMax ? -__int_as_float(0x7f800000) : 0.f;
  v = lane < warps ? scratch[lane] : identity;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  return v;
}

__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce<false>(v, scratch); }
__device__ __forceinline__ float block_max(float v, float* scratch) { return block_reduce<true>(v, scratch); }

// Threads per block for rows of n elements: one element per thread per 4-wide pack, between 32 and 1024.
inline int threads_for_row(long long n) {
  int t = 32;
  while (t < 1024 && static_cast<long long>(t) * 4 < n) t *= 2;
  return t;
}

}  // namespace
}  // namespace gpt3d
