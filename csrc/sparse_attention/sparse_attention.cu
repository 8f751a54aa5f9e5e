// CUDA block-sparse causal attention (forward, backward), torch-free behind the extern "C" launchers of
// sparse_attention_cuda.h. One thread block per (batch*head, query block) or (batch*head, key block); tiles live in
// dynamic shared memory as fp32 (bf16 converted on load), the per-block math comes from block_math.h.
// The backward runs atomics-free in two kernels: dQ walks the layout by rows (CSR), dK/dV by columns (CSC).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "sparse_attention/block_math.h"
#include "sparse_attention/sparse_attention_cuda.h"

namespace gpt3d_sparse {

// float16 storage (CUDA only), in the namespace of block_math.h's float and bf16-bits overloads so that one lookup
// sees all three.
__device__ __forceinline__ float load_as_float(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void store_from_float(__half* p, int64_t i, float x) { p[i] = __float2half_rn(x); }

namespace {

constexpr int kThreads = 128;

struct ExpF { GPT3D_HD float operator()(float x) const { return expf(x); } };
struct LogF { GPT3D_HD float operator()(float x) const { return logf(x); } };

// rows x dim tile of T at src into fp32 shared memory (times mul).
template <typename T>
__device__ void load_tile(const T* src, int rows, int dim, float mul, float* dst) {
  for (int x = threadIdx.x; x < rows * dim; x += blockDim.x) dst[x] = mul * load_as_float(src, x);
}

// S[r][c] = dot(A[r], Bm[c]) over dim for the n x n block pair, -inf where the causal rule hides the key.
__device__ void block_scores(const float* A, const float* Bm, int n, int dim, int64_t qb, int64_t kb, float* S) {
  for (int x = threadIdx.x; x < n * n; x += blockDim.x) {
    const int r = x / n, c = x % n;
    float acc = 0.f;
    for (int d = 0; d < dim; ++d) acc += A[r * dim + d] * Bm[c * dim + d];
    S[x] = key_visible(qb, kb, r, c) ? acc : -INFINITY;
  }
}

template <typename T>
__global__ void forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, const int32_t* row_ptr,
                               const int32_t* col_idx, int64_t heads, int64_t seq, int dim, int n, float scale) {
  extern __shared__ float smem[];
  float* Qs = smem;              // [n x dim], pre-scaled
  float* KV = Qs + n * dim;      // K, then V of the current key block
  float* O = KV + n * dim;       // [n x dim] running output
  float* S = O + n * dim;        // [n x n] scores -> probabilities
  float* m = S + n * n;          // [n] running max
  float* l = m + n;              // [n] running sum
  float* alpha = l + n;          // [n] rescale of this step
  const int64_t nb = seq / n, i = blockIdx.x, bh = blockIdx.y, h = bh % heads;
  const int64_t row_off = (bh * seq + i * n) * dim;
  load_tile(q + row_off, n, dim, scale, Qs);
  for (int x = threadIdx.x; x < n * dim; x += blockDim.x) O[x] = 0.f;
  for (int r = threadIdx.x; r < n; r += blockDim.x) { m[r] = -INFINITY; l[r] = 0.f; }
  __syncthreads();
  for (int32_t e = row_ptr[h * nb + i]; e < row_ptr[h * nb + i + 1]; ++e) {
    const int64_t j = col_idx[e], key_off = (bh * seq + j * n) * dim;
    load_tile(k + key_off, n, dim, 1.f, KV);
    __syncthreads();
    block_scores(Qs, KV, n, dim, i, j, S);
    __syncthreads();
    for (int r = threadIdx.x; r < n; r += blockDim.x) {  // online softmax, one row per thread
      float bm = -INFINITY;
      for (int c = 0; c < n; ++c) bm = fmaxf(bm, S[r * n + c]);
      const RowRescale rs = online_softmax_rescale(m[r], bm, ExpF());
      float sum = 0.f;
      for (int c = 0; c < n; ++c) { const float p = expf(S[r * n + c] - rs.m_new); S[r * n + c] = p; sum += p; }
      l[r] = l[r] * rs.alpha + sum;
      m[r] = rs.m_new;
      alpha[r] = rs.alpha;
    }
    load_tile(v + key_off, n, dim, 1.f, KV);  // K is no longer read: the scores were synced above
    __syncthreads();
    for (int x = threadIdx.x; x < n * dim; x += blockDim.x) {
      const int r = x / dim, d = x % dim;
      float acc = O[x] * alpha[r];
      for (int c = 0; c < n; ++c) acc += S[r * n + c] * KV[c * dim + d];
      O[x] = acc;
    }
    __syncthreads();
  }
  for (int x = threadIdx.x; x < n * dim; x += blockDim.x) store_from_float(out, row_off + x, O[x] / l[x / dim]);
  for (int r = threadIdx.x; r < n; r += blockDim.x) lse[bh * seq + i * n + r] = row_logsumexp(m[r], l[r], LogF());
}

template <typename T>
__global__ void delta_kernel(const T* dout, const T* out, float* delta, int64_t rows, int dim) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float acc = 0.f;
  for (int d = 0; d < dim; ++d) acc += load_as_float(dout, r * dim + d) * load_as_float(out, r * dim + d);
  delta[r] = acc;
}

// P = exp(S - lse) then dS = P * (dO V^T - delta), in place in S; Qs is pre-scaled, so S already holds the scores.
__device__ void block_score_grads(const float* Qs, const float* K, const float* dO, const float* V, const float* lse,
                                  const float* delta, int n, int dim, int64_t qb, int64_t kb, float* S) {
  for (int x = threadIdx.x; x < n * n; x += blockDim.x) {
    const int r = x / n, c = x % n;
    float s = 0.f, dp = 0.f;
    for (int d = 0; d < dim; ++d) { s += Qs[r * dim + d] * K[c * dim + d]; dp += dO[r * dim + d] * V[c * dim + d]; }
    const float p = key_visible(qb, kb, r, c) ? expf(s - lse[r]) : 0.f;
    S[x] = score_grad(p, dp, delta[r]);
  }
}

template <typename T>
__global__ void backward_dq_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse_g,
                                   const float* delta_g, T* dq, const int32_t* row_ptr, const int32_t* col_idx,
                                   int64_t heads, int64_t seq, int dim, int n, float scale) {
  extern __shared__ float smem[];
  float* Qs = smem;
  float* dO = Qs + n * dim;
  float* K = dO + n * dim;
  float* V = K + n * dim;
  float* dQ = V + n * dim;
  float* S = dQ + n * dim;
  float* lse = S + n * n;
  float* delta = lse + n;
  const int64_t nb = seq / n, i = blockIdx.x, bh = blockIdx.y, h = bh % heads;
  const int64_t row_off = (bh * seq + i * n) * dim;
  load_tile(q + row_off, n, dim, scale, Qs);
  load_tile(dout + row_off, n, dim, 1.f, dO);
  for (int x = threadIdx.x; x < n * dim; x += blockDim.x) dQ[x] = 0.f;
  for (int r = threadIdx.x; r < n; r += blockDim.x) {
    lse[r] = lse_g[bh * seq + i * n + r];
    delta[r] = delta_g[bh * seq + i * n + r];
  }
  __syncthreads();
  for (int32_t e = row_ptr[h * nb + i]; e < row_ptr[h * nb + i + 1]; ++e) {
    const int64_t j = col_idx[e], key_off = (bh * seq + j * n) * dim;
    load_tile(k + key_off, n, dim, 1.f, K);
    load_tile(v + key_off, n, dim, 1.f, V);
    __syncthreads();
    block_score_grads(Qs, K, dO, V, lse, delta, n, dim, i, j, S);
    __syncthreads();
    for (int x = threadIdx.x; x < n * dim; x += blockDim.x) {  // dQ_i += dS K_j
      const int r = x / dim, d = x % dim;
      float acc = 0.f;
      for (int c = 0; c < n; ++c) acc += S[r * n + c] * K[c * dim + d];
      dQ[x] += acc;
    }
    __syncthreads();
  }
  for (int x = threadIdx.x; x < n * dim; x += blockDim.x) store_from_float(dq, row_off + x, scale * dQ[x]);
}

template <typename T>
__global__ void backward_dkdv_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse_g,
                                     const float* delta_g, T* dk, T* dv, const int32_t* col_ptr,
                                     const int32_t* row_idx, int64_t heads, int64_t seq, int dim, int n, float scale) {
  extern __shared__ float smem[];
  float* K = smem;
  float* V = K + n * dim;
  float* dK = V + n * dim;
  float* dV = dK + n * dim;
  float* Qs = dV + n * dim;
  float* dO = Qs + n * dim;
  float* S = dO + n * dim;      // dS
  float* P = S + n * n;         // P (kept for dV)
  float* lse = P + n * n;
  float* delta = lse + n;
  const int64_t nb = seq / n, j = blockIdx.x, bh = blockIdx.y, h = bh % heads;
  const int64_t key_off = (bh * seq + j * n) * dim;
  load_tile(k + key_off, n, dim, 1.f, K);
  load_tile(v + key_off, n, dim, 1.f, V);
  for (int x = threadIdx.x; x < n * dim; x += blockDim.x) { dK[x] = 0.f; dV[x] = 0.f; }
  for (int32_t e = col_ptr[h * nb + j]; e < col_ptr[h * nb + j + 1]; ++e) {
    const int64_t i = row_idx[e], row_off = (bh * seq + i * n) * dim;
    __syncthreads();  // the previous pair's readers of Qs / dO / S / P are done
    load_tile(q + row_off, n, dim, scale, Qs);
    load_tile(dout + row_off, n, dim, 1.f, dO);
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
      lse[r] = lse_g[bh * seq + i * n + r];
      delta[r] = delta_g[bh * seq + i * n + r];
    }
    __syncthreads();
    for (int x = threadIdx.x; x < n * n; x += blockDim.x) {
      const int r = x / n, c = x % n;
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < dim; ++d) { s += Qs[r * dim + d] * K[c * dim + d]; dp += dO[r * dim + d] * V[c * dim + d]; }
      const float p = key_visible(i, j, r, c) ? expf(s - lse[r]) : 0.f;
      P[x] = p;
      S[x] = score_grad(p, dp, delta[r]);
    }
    __syncthreads();
    for (int x = threadIdx.x; x < n * dim; x += blockDim.x) {  // dV_j += P^T dO_i, dK_j += dS^T (scale Q_i)
      const int c = x / dim, d = x % dim;
      float av = 0.f, ak = 0.f;
      for (int r = 0; r < n; ++r) { av += P[r * n + c] * dO[r * dim + d]; ak += S[r * n + c] * Qs[r * dim + d]; }
      dV[x] += av;
      dK[x] += ak;
    }
  }
  __syncthreads();
  for (int x = threadIdx.x; x < n * dim; x += blockDim.x) {
    store_from_float(dk, key_off + x, dK[x]);
    store_from_float(dv, key_off + x, dV[x]);
  }
}

int64_t smem_floats(int kernel, int64_t n, int64_t dim) {
  if (kernel == 0) return 3 * n * dim + n * n + 3 * n;
  if (kernel == 1) return 5 * n * dim + n * n + 2 * n;
  return 6 * n * dim + 2 * n * n + 2 * n;
}

// Opt the kernel into `bytes` of dynamic shared memory, or report that the device cannot give that much.
template <typename Kernel>
int prepare_smem(Kernel kernel, int64_t bytes) {
  int device = 0, limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return (int)err;
  err = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return (int)err;
  if (bytes > limit) return GPT3D_SPARSE_SMEM_TOO_LARGE;
  return (int)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

template <typename T>
int launch_forward(const void* q, const void* k, const void* v, void* out, float* lse, const int32_t* row_ptr,
                   const int32_t* col_idx, int64_t batch, int64_t heads, int64_t seq, int64_t dim, int64_t n,
                   float scale, cudaStream_t stream) {
  const int64_t bytes = smem_floats(0, n, dim) * (int64_t)sizeof(float);
  const int rc = prepare_smem(forward_kernel<T>, bytes);
  if (rc != 0) return rc;
  const dim3 grid((unsigned)(seq / n), (unsigned)(batch * heads));
  forward_kernel<T><<<grid, kThreads, bytes, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out), lse,
      row_ptr, col_idx, heads, seq, (int)dim, (int)n, scale);
  return (int)cudaGetLastError();
}

template <typename T>
int launch_backward(const void* dout, const void* q, const void* k, const void* v, const void* out, const float* lse,
                    void* dq, void* dk, void* dv, float* delta, const int32_t* row_ptr, const int32_t* col_idx,
                    const int32_t* col_ptr, const int32_t* row_idx, int64_t batch, int64_t heads, int64_t seq,
                    int64_t dim, int64_t n, float scale, cudaStream_t stream) {
  const int64_t dq_bytes = smem_floats(1, n, dim) * (int64_t)sizeof(float);
  const int64_t dkdv_bytes = smem_floats(2, n, dim) * (int64_t)sizeof(float);
  int rc = prepare_smem(backward_dq_kernel<T>, dq_bytes);
  if (rc != 0) return rc;
  rc = prepare_smem(backward_dkdv_kernel<T>, dkdv_bytes);
  if (rc != 0) return rc;
  const int64_t rows = batch * heads * seq;
  delta_kernel<T><<<(unsigned)((rows + 255) / 256), 256, 0, stream>>>(
      static_cast<const T*>(dout), static_cast<const T*>(out), delta, rows, (int)dim);
  const dim3 grid((unsigned)(seq / n), (unsigned)(batch * heads));
  backward_dq_kernel<T><<<grid, kThreads, dq_bytes, stream>>>(
      static_cast<const T*>(dout), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
      delta, static_cast<T*>(dq), row_ptr, col_idx, heads, seq, (int)dim, (int)n, scale);
  backward_dkdv_kernel<T><<<grid, kThreads, dkdv_bytes, stream>>>(
      static_cast<const T*>(dout), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
      delta, static_cast<T*>(dk), static_cast<T*>(dv), col_ptr, row_idx, heads, seq, (int)dim, (int)n, scale);
  return (int)cudaGetLastError();
}

}  // namespace
}  // namespace gpt3d_sparse

extern "C" int64_t gpt3d_sparse_attention_cuda_smem_bytes(int kernel, int64_t block, int64_t dim) {
  return gpt3d_sparse::smem_floats(kernel, block, dim) * (int64_t)sizeof(float);
}

extern "C" int gpt3d_sparse_attention_forward_cuda(const void* q, const void* k, const void* v, void* out, float* lse,
                                                   const int32_t* row_ptr, const int32_t* col_idx, int64_t batch,
                                                   int64_t heads, int64_t seq, int64_t dim, int64_t block, float scale,
                                                   int dtype, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == GPT3D_SPARSE_BFLOAT16)
    return gpt3d_sparse::launch_forward<uint16_t>(q, k, v, out, lse, row_ptr, col_idx, batch, heads, seq, dim, block,
                                                  scale, s);
  if (dtype == GPT3D_SPARSE_FLOAT16)
    return gpt3d_sparse::launch_forward<__half>(q, k, v, out, lse, row_ptr, col_idx, batch, heads, seq, dim, block,
                                                scale, s);
  return gpt3d_sparse::launch_forward<float>(q, k, v, out, lse, row_ptr, col_idx, batch, heads, seq, dim, block,
                                             scale, s);
}

extern "C" int gpt3d_sparse_attention_backward_cuda(const void* dout, const void* q, const void* k, const void* v,
                                                    const void* out, const float* lse, void* dq, void* dk, void* dv,
                                                    float* delta, const int32_t* row_ptr, const int32_t* col_idx,
                                                    const int32_t* col_ptr, const int32_t* row_idx, int64_t batch,
                                                    int64_t heads, int64_t seq, int64_t dim, int64_t block,
                                                    float scale, int dtype, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == GPT3D_SPARSE_BFLOAT16)
    return gpt3d_sparse::launch_backward<uint16_t>(dout, q, k, v, out, lse, dq, dk, dv, delta, row_ptr, col_idx,
                                                   col_ptr, row_idx, batch, heads, seq, dim, block, scale, s);
  if (dtype == GPT3D_SPARSE_FLOAT16)
    return gpt3d_sparse::launch_backward<__half>(dout, q, k, v, out, lse, dq, dk, dv, delta, row_ptr, col_idx,
                                                 col_ptr, row_idx, batch, heads, seq, dim, block, scale, s);
  return gpt3d_sparse::launch_backward<float>(dout, q, k, v, out, lse, dq, dk, dv, delta, row_ptr, col_idx, col_ptr,
                                              row_idx, batch, heads, seq, dim, block, scale, s);
}
