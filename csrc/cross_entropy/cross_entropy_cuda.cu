// Cross-entropy CUDA kernels: one block per row (grid-stride over rows), block max / sum reductions in fp32, math in
// fp32 (cross_entropy_math.h), storage fp32, bf16 or fp16. Torch-free: launched through the extern "C" functions of
// cross_entropy_cuda.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/bf16.h"
#include "common/cuda_dtype.cuh"
#include "common/cuda_half.cuh"
#include "common/cuda_reduce.cuh"
#include "cross_entropy/cross_entropy_cuda.h"
#include "cross_entropy/cross_entropy_math.h"

namespace gpt3d {
namespace {

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// As torch.logsumexp: -inf for an empty or all -inf row, +inf when a logit is +inf, NaN when one is NaN.
template <class T>
__global__ void logsumexp_rows_kernel(LogSumExpArgs a) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* x = static_cast<const T*>(a.logits) + row * a.cols;
    float m = -pos_inf(), nan_seen = 0.f;
    for (int64_t j = threadIdx.x; j < a.real_cols; j += blockDim.x) {
      const float v = load_as_float(x, j);
      m = fmaxf(m, v);  // fmaxf drops NaN: counted apart
      nan_seen += isnan(v) ? 1.f : 0.f;
    }
    m = block_max(m, scratch);
    nan_seen = block_sum(nan_seen, scratch);
    float lse = m;
    if (nan_seen > 0.f) {
      lse = __int_as_float(0x7fc00000);
    } else if (m > -pos_inf() && m < pos_inf()) {
      float sum = 0.f;
      for (int64_t j = threadIdx.x; j < a.real_cols; j += blockDim.x) sum += __expf(load_as_float(x, j) - m);
      lse = m + logf(block_sum(sum, scratch));
    }
    if (threadIdx.x == 0) a.lse[row] = lse;
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(CrossEntropyBackwardArgs a) {
  const float scale = *a.scale;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    T* x = static_cast<T*>(a.logits) + row * a.cols;
    const float lse = a.lse[row];
    const int64_t label = a.labels[row];
    for (int64_t j = threadIdx.x; j < a.cols; j += blockDim.x) {
      const float g = j < a.real_cols ? cross_entropy_grad(__expf(load_as_float(x, j) - lse), j == label, scale)
                                      : 0.f;
      store_from_float(x, j, g);
    }
  }
}

int blocks_for(int64_t rows) { return static_cast<int>(rows < 65535 ? rows : 65535); }  // grid-stride: the rest

template <class T>
int launch_logsumexp(const LogSumExpArgs& a, cudaStream_t stream) {
  logsumexp_rows_kernel<T><<<blocks_for(a.rows), threads_for_row(a.real_cols), 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

template <class T>
int launch_backward(const CrossEntropyBackwardArgs& a, cudaStream_t stream) {
  cross_entropy_backward_kernel<T><<<blocks_for(a.rows), threads_for_row(a.cols), 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace gpt3d

extern "C" int gpt3d_logsumexp_rows_cuda(const gpt3d::LogSumExpArgs* args, void* stream) {
  return gpt3d::by_dtype(args->dtype, [&](auto storage) {
    return gpt3d::launch_logsumexp<decltype(storage)>(*args, static_cast<cudaStream_t>(stream));
  });
}

extern "C" int gpt3d_cross_entropy_backward_cuda(const gpt3d::CrossEntropyBackwardArgs* args, void* stream) {
  return gpt3d::by_dtype(args->dtype, [&](auto storage) {
    return gpt3d::launch_backward<decltype(storage)>(*args, static_cast<cudaStream_t>(stream));
  });
}
