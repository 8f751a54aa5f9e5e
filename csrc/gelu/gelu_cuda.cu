// GELU (tanh approximation) CUDA kernels: grid-stride over elements, fp32 math (gelu_math.h), storage fp32, bf16 or
// fp16. Torch-free: launched through the extern "C" functions of gelu_cuda.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/bf16.h"
#include "common/cuda_dtype.cuh"
#include "common/cuda_half.cuh"
#include "gelu/gelu_cuda.h"
#include "gelu/gelu_math.h"

namespace gpt3d {
namespace {

__device__ __forceinline__ float gate(float x) {
  using namespace gelu_math;
  return 1.f / (1.f + __expf(x * fmaf(x * x, kNegCubic, kNegLinear)));
}

template <class T>
__global__ void gelu_forward_kernel(const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = load_as_float(x, i);
    store_from_float(y, i, v * gate(v));
  }
}

template <class T>
__global__ void gelu_backward_kernel(const T* x, const T* dy, T* dx, int64_t n) {
  using namespace gelu_math;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = load_as_float(x, i), s = gate(v);
    const float slope = fmaf(v * v, kSlopeCubic, kSlope);
    store_from_float(dx, i, load_as_float(dy, i) * (s + v * s * (1.f - s) * slope));
  }
}

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);  // grid-stride covers the rest
}

template <class T>
int launch_forward(const GeluArgs& a, cudaStream_t stream) {
  gelu_forward_kernel<T><<<blocks_for(a.n), kThreads, 0, stream>>>(static_cast<const T*>(a.x), static_cast<T*>(a.out),
                                                                   a.n);
  return static_cast<int>(cudaGetLastError());
}

template <class T>
int launch_backward(const GeluArgs& a, cudaStream_t stream) {
  gelu_backward_kernel<T><<<blocks_for(a.n), kThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.dy), static_cast<T*>(a.out), a.n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace gpt3d

extern "C" int gpt3d_gelu_forward_cuda(const gpt3d::GeluArgs* args, void* stream) {
  return gpt3d::by_dtype(args->dtype, [&](auto storage) {
    return gpt3d::launch_forward<decltype(storage)>(*args, static_cast<cudaStream_t>(stream));
  });
}

extern "C" int gpt3d_gelu_backward_cuda(const gpt3d::GeluArgs* args, void* stream) {
  return gpt3d::by_dtype(args->dtype, [&](auto storage) {
    return gpt3d::launch_backward<decltype(storage)>(*args, static_cast<cudaStream_t>(stream));
  });
}
