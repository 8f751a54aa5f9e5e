// LayerNorm CUDA kernels: one block per row (grid-stride), fp32 statistics with block reductions, 4-wide vectorised
// loads/stores when rows are aligned; dgamma/dbeta by a column-tiled partial-sum kernel plus a final sum over chunks.
// Torch-free: launched through the extern "C" functions of layer_norm_cuda.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/bf16.h"
#include "common/cuda_half.cuh"
#include "common/cuda_pack.cuh"
#include "common/cuda_reduce.cuh"
#include "layer_norm/layer_norm_cuda.h"
#include "layer_norm/layer_norm_math.h"

namespace gpt3d {
namespace {

constexpr int kParamTile = 32;      // columns per block of the dgamma/dbeta kernel
constexpr int kParamRows = 8;       // rows processed in parallel by that block
constexpr int64_t kChunkRows = 64;  // rows per dgamma/dbeta partial sum

// Calls f(j, value) for the elements of a row this thread owns: packs of 4 when `packed`, else one at a time.
// Every pass over a row uses this same ownership, so a thread re-reads only what it wrote itself.
template <class T, class F>
__device__ __forceinline__ void for_own_elements(const T* p, int64_t cols, bool packed, F f) {
  if (packed) {
    for (int64_t j = 4 * static_cast<int64_t>(threadIdx.x); j < cols; j += 4 * blockDim.x) {
      const Float4 v = load4(p + j);
#pragma unroll
      for (int k = 0; k < 4; ++k) f(j + k, v.v[k]);
    }
  } else {
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) f(j, load_as_float(p, j));
  }
}

template <class T, class W>
__global__ void layer_norm_forward_kernel(LayerNormForwardArgs a, bool packed) {
  __shared__ float scratch[32];
  const int64_t cols = a.cols;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* x = static_cast<const T*>(a.x) + row * cols;
    T* y = static_cast<T*>(a.y) + row * cols;
    if (a.residual != nullptr) {  // sum = x + residual rounded to T; the row then normalises the stored sum
      const T* r = static_cast<const T*>(a.residual) + row * cols;
      T* s = static_cast<T*>(a.sum) + row * cols;
      for_own_elements(x, cols, packed, [&](int64_t j, float v) { store_from_float(s, j, v + load_as_float(r, j)); });
      x = s;
    }
    float acc = 0.f;
    for_own_elements(x, cols, packed, [&](int64_t, float v) { acc += v; });
    const float mean = block_sum(acc, scratch) / static_cast<float>(cols);
    acc = 0.f;
    for_own_elements(x, cols, packed, [&](int64_t, float v) { acc += (v - mean) * (v - mean); });
    const float rstd = ln_rstd(block_sum(acc, scratch), cols, a.eps);
    const W* gamma = static_cast<const W*>(a.gamma);
    const W* beta = static_cast<const W*>(a.beta);
    if (packed) {
      for (int64_t j = 4 * static_cast<int64_t>(threadIdx.x); j < cols; j += 4 * blockDim.x) {
        Float4 v = load4(x + j);
#pragma unroll
        for (int k = 0; k < 4; ++k)
          v.v[k] = ln_affine(ln_normalize(v.v[k], mean, rstd), load_as_float(gamma, j + k), load_as_float(beta, j + k));
        store4(y + j, v);
      }
    } else {
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
        store_from_float(y, j, ln_affine(ln_normalize(load_as_float(x, j), mean, rstd), load_as_float(gamma, j),
                                         load_as_float(beta, j)));
    }
    if (threadIdx.x == 0) {
      a.mean[row] = mean;
      a.rstd[row] = rstd;
    }
  }
}

template <class T, class W>
__global__ void layer_norm_input_grad_kernel(LayerNormBackwardArgs a) {
  __shared__ float scratch[32];
  const int64_t cols = a.cols;
  const W* gamma = static_cast<const W*>(a.gamma);
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* dy = static_cast<const T*>(a.dy) + row * cols;
    const T* x = static_cast<const T*>(a.x) + row * cols;
    const T* dextra = a.dextra ? static_cast<const T*>(a.dextra) + row * cols : nullptr;
    T* dx = static_cast<T*>(a.dx) + row * cols;
    const float mean = a.mean[row], rstd = a.rstd[row];
    float sum_g = 0.f, sum_g_xhat = 0.f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = load_as_float(dy, j) * load_as_float(gamma, j);
      sum_g += g;
      sum_g_xhat += g * ln_normalize(load_as_float(x, j), mean, rstd);
    }
    const float inv_cols = 1.f / static_cast<float>(cols);
    const float mean_g = block_sum(sum_g, scratch) * inv_cols;
    const float mean_g_xhat = block_sum(sum_g_xhat, scratch) * inv_cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = load_as_float(dy, j) * load_as_float(gamma, j);
      float d = ln_input_grad(g, ln_normalize(load_as_float(x, j), mean, rstd), rstd, mean_g, mean_g_xhat);
      if (dextra != nullptr) d += load_as_float(dextra, j);
      store_from_float(dx, j, d);
    }
  }
}

// partial[chunk][0][col] = sum over the chunk's rows of dy * xhat, partial[chunk][1][col] = sum of dy.
template <class T>
__global__ void layer_norm_param_grad_partial_kernel(LayerNormBackwardArgs a, float* partial) {
  __shared__ float sg[kParamRows][kParamTile + 1], sb[kParamRows][kParamTile + 1];
  const int64_t cols = a.cols, col = static_cast<int64_t>(blockIdx.x) * kParamTile + threadIdx.x;
  const int64_t chunk = blockIdx.y, r0 = chunk * kChunkRows;
  const int64_t r1 = r0 + kChunkRows < a.rows ? r0 + kChunkRows : a.rows;
  float acc_g = 0.f, acc_b = 0.f;
  if (col < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kParamRows) {
      const float dy = load_as_float(static_cast<const T*>(a.dy), r * cols + col);
      const float x = load_as_float(static_cast<const T*>(a.x), r * cols + col);
      acc_g += dy * ln_normalize(x, a.mean[r], a.rstd[r]);
      acc_b += dy;
    }
  }
  sg[threadIdx.y][threadIdx.x] = acc_g;
  sb[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    for (int k = 1; k < kParamRows; ++k) {
      acc_g += sg[k][threadIdx.x];
      acc_b += sb[k][threadIdx.x];
    }
    partial[(chunk * 2) * cols + col] = acc_g;
    partial[(chunk * 2 + 1) * cols + col] = acc_b;
  }
}

template <class W>
__global__ void layer_norm_param_grad_final_kernel(const float* partial, int64_t chunks, int64_t cols, W* dgamma,
                                                   W* dbeta) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float g = 0.f, b = 0.f;
  for (int64_t k = 0; k < chunks; ++k) {
    g += partial[(k * 2) * cols + col];
    b += partial[(k * 2 + 1) * cols + col];
  }
  store_from_float(dgamma + col, 0, g);
  store_from_float(dbeta + col, 0, b);
}

unsigned row_grid(int64_t rows) { return static_cast<unsigned>(rows < 65535LL * 16 ? rows : 65535LL * 16); }

template <class T, class W>
struct LaunchForward {
  static void run(const LayerNormForwardArgs& a, cudaStream_t stream) {
    const bool packed = pack_aligned(static_cast<const T*>(a.x), a.cols) &&
                        pack_aligned(static_cast<const T*>(a.y), a.cols) &&
                        (a.residual == nullptr || (pack_aligned(static_cast<const T*>(a.residual), a.cols) &&
                                                   pack_aligned(static_cast<const T*>(a.sum), a.cols)));
    layer_norm_forward_kernel<T, W><<<row_grid(a.rows), threads_for_row(a.cols), 0, stream>>>(a, packed);
  }
};

template <class T, class W>
struct LaunchBackward {
  static void run(const LayerNormBackwardArgs& a, float* workspace, cudaStream_t stream) {
    layer_norm_input_grad_kernel<T, W><<<row_grid(a.rows), threads_for_row(a.cols), 0, stream>>>(a);
    const int64_t chunks = (a.rows + kChunkRows - 1) / kChunkRows;
    const dim3 grid(static_cast<unsigned>((a.cols + kParamTile - 1) / kParamTile), static_cast<unsigned>(chunks));
    layer_norm_param_grad_partial_kernel<T><<<grid, dim3(kParamTile, kParamRows), 0, stream>>>(a, workspace);
    layer_norm_param_grad_final_kernel<W><<<static_cast<unsigned>((a.cols + 255) / 256), 256, 0, stream>>>(
        workspace, chunks, a.cols, static_cast<W*>(a.dgamma), static_cast<W*>(a.dbeta));
  }
};

// Storage types: x is float, bf16 bits or __half; the weights have x's type or are float (the bindings check this).
template <template <class, class> class Launch, class... Args>
void dispatch(DType x_dtype, DType w_dtype, const Args&... args) {
  if (x_dtype == DType::kFloat32) Launch<float, float>::run(args...);
  else if (x_dtype == DType::kBFloat16 && w_dtype == DType::kBFloat16) Launch<uint16_t, uint16_t>::run(args...);
  else if (x_dtype == DType::kBFloat16) Launch<uint16_t, float>::run(args...);
  else if (w_dtype == DType::kFloat16) Launch<__half, __half>::run(args...);
  else Launch<__half, float>::run(args...);
}

}  // namespace
}  // namespace gpt3d

extern "C" int gpt3d_layer_norm_forward_cuda(const gpt3d::LayerNormForwardArgs* args, void* stream) {
  if (args->rows == 0) return 0;
  gpt3d::dispatch<gpt3d::LaunchForward>(args->x_dtype, args->w_dtype, *args, static_cast<cudaStream_t>(stream));
  return static_cast<int>(cudaGetLastError());
}

extern "C" long long gpt3d_layer_norm_backward_workspace_floats(long long rows, long long cols) {
  return 2 * cols * ((rows + gpt3d::kChunkRows - 1) / gpt3d::kChunkRows);
}

extern "C" int gpt3d_layer_norm_backward_cuda(const gpt3d::LayerNormBackwardArgs* args, float* workspace,
                                              void* stream) {
  if (args->rows == 0) return 0;
  gpt3d::dispatch<gpt3d::LaunchBackward>(args->x_dtype, args->w_dtype, *args, workspace,
                                         static_cast<cudaStream_t>(stream));
  return static_cast<int>(cudaGetLastError());
}
