// Scaled masked softmax CUDA kernels: one block per row (grid-stride), block max / sum reductions in fp32, 4-wide
// vectorised loads/stores when rows are aligned, keys beyond the causal limit never read. Torch-free: launched through
// the extern "C" functions of softmax_cuda.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/bf16.h"
#include "common/cuda_half.cuh"
#include "common/cuda_pack.cuh"
#include "common/cuda_reduce.cuh"
#include "softmax/softmax_cuda.h"
#include "softmax/softmax_math.h"

namespace gpt3d {
namespace {

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

struct RowView {
  const bool* mask;  // null = no mask tensor
  int64_t visible;   // keys [0, visible) are candidates
  float scale;
  // Scaled score of key j, or -inf when it is masked out.
  __device__ __forceinline__ float logit(int64_t j, float x) const {
    return (j >= visible || (mask != nullptr && mask[j])) ? neg_inf() : x * scale;
  }
};

template <class T>
__global__ void softmax_forward_kernel(SoftmaxForwardArgs a, bool packed) {
  __shared__ float scratch[32];
  const int64_t rows = a.batch * a.heads * a.sq, sk = a.sk;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t q = row % a.sq, bh = row / a.sq;
    const T* x = static_cast<const T*>(a.x) + row * sk;
    T* y = static_cast<T*>(a.y) + row * sk;
    RowView v{a.mask == nullptr ? nullptr
                                : a.mask + (bh / a.heads) * a.mask_stride_b + (bh % a.heads) * a.mask_stride_h +
                                      q * a.mask_stride_q,
              a.causal ? causal_visible_keys(q, a.sq, sk) : sk, a.scale};
    float m = neg_inf();
    for (int64_t j = threadIdx.x; j < v.visible; j += blockDim.x) m = fmaxf(m, v.logit(j, load_as_float(x, j)));
    m = block_max(m, scratch);
    const bool empty = !(m > neg_inf());  // every key masked: the row is zeros (same answer in every thread)
    float sum = 0.f;
    if (!empty) {
      for (int64_t j = threadIdx.x; j < v.visible; j += blockDim.x) {
        const float l = v.logit(j, load_as_float(x, j));
        sum += l > neg_inf() ? __expf(l - m) : 0.f;
      }
      sum = block_sum(sum, scratch);
    }
    const float inv = empty ? 0.f : 1.f / sum;
    auto prob = [&](int64_t j, float xj) {
      const float l = v.logit(j, xj);
      return l > neg_inf() ? __expf(l - m) * inv : 0.f;
    };
    if (packed) {
      for (int64_t j = 4 * static_cast<int64_t>(threadIdx.x); j < sk; j += 4 * blockDim.x) {
        Float4 p = j < v.visible ? load4(x + j) : Float4{{0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int k = 0; k < 4; ++k) p.v[k] = prob(j + k, p.v[k]);
        store4(y + j, p);
      }
    } else {
      for (int64_t j = threadIdx.x; j < sk; j += blockDim.x)
        store_from_float(y, j, prob(j, j < v.visible ? load_as_float(x, j) : 0.f));
    }
  }
}

template <class T>
__global__ void softmax_backward_kernel(SoftmaxBackwardArgs a, bool packed) {
  __shared__ float scratch[32];
  const int64_t sk = a.sk;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* dy = static_cast<const T*>(a.dy) + row * sk;
    const T* y = static_cast<const T*>(a.y) + row * sk;
    T* dx = static_cast<T*>(a.dx) + row * sk;
    const int64_t visible = a.causal ? causal_visible_keys(row % a.sq, a.sq, sk) : sk;
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) dot += load_as_float(dy, j) * load_as_float(y, j);
    dot = block_sum(dot, scratch);
    if (packed) {
      for (int64_t j = 4 * static_cast<int64_t>(threadIdx.x); j < sk; j += 4 * blockDim.x) {
        Float4 d{{0.f, 0.f, 0.f, 0.f}};
        if (j < visible) {
          const Float4 g = load4(dy + j), p = load4(y + j);
#pragma unroll
          for (int k = 0; k < 4; ++k) d.v[k] = j + k < visible ? softmax_input_grad(g.v[k], p.v[k], dot, a.scale) : 0.f;
        }
        store4(dx + j, d);
      }
    } else {
      for (int64_t j = threadIdx.x; j < sk; j += blockDim.x)
        store_from_float(dx, j, j < visible ? softmax_input_grad(load_as_float(dy, j), load_as_float(y, j), dot, a.scale)
                                            : 0.f);
    }
  }
}

unsigned row_grid(int64_t rows) { return static_cast<unsigned>(rows < 65535LL * 16 ? rows : 65535LL * 16); }

template <class T>
void launch_forward(const SoftmaxForwardArgs& a, cudaStream_t stream) {
  const bool packed = pack_aligned(static_cast<const T*>(a.x), a.sk) && pack_aligned(static_cast<const T*>(a.y), a.sk);
  softmax_forward_kernel<T><<<row_grid(a.batch * a.heads * a.sq), threads_for_row(a.sk), 0, stream>>>(a, packed);
}

template <class T>
void launch_backward(const SoftmaxBackwardArgs& a, cudaStream_t stream) {
  const bool packed = pack_aligned(static_cast<const T*>(a.dy), a.sk) &&
                      pack_aligned(static_cast<const T*>(a.y), a.sk) && pack_aligned(static_cast<const T*>(a.dx), a.sk);
  softmax_backward_kernel<T><<<row_grid(a.rows), threads_for_row(a.sk), 0, stream>>>(a, packed);
}

}  // namespace
}  // namespace gpt3d

extern "C" int gpt3d_softmax_forward_cuda(const gpt3d::SoftmaxForwardArgs* args, void* stream) {
  if (args->batch * args->heads * args->sq == 0 || args->sk == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args->dtype == gpt3d::DType::kFloat32) gpt3d::launch_forward<float>(*args, s);
  else if (args->dtype == gpt3d::DType::kBFloat16) gpt3d::launch_forward<uint16_t>(*args, s);
  else gpt3d::launch_forward<__half>(*args, s);
  return static_cast<int>(cudaGetLastError());
}

extern "C" int gpt3d_softmax_backward_cuda(const gpt3d::SoftmaxBackwardArgs* args, void* stream) {
  if (args->rows == 0 || args->sk == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args->dtype == gpt3d::DType::kFloat32) gpt3d::launch_backward<float>(*args, s);
  else if (args->dtype == gpt3d::DType::kBFloat16) gpt3d::launch_backward<uint16_t>(*args, s);
  else gpt3d::launch_backward<__half>(*args, s);
  return static_cast<int>(cudaGetLastError());
}
