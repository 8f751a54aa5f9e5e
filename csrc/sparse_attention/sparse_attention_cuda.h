// extern "C" launchers of the CUDA block-sparse attention kernels (sparse_attention.cu, torch-free).
// All pointers are device pointers; tensors are contiguous [batch, heads, seq, dim] of the storage type `dtype` names
// (GPT3D_SPARSE_FLOAT32, _BFLOAT16 as raw bits, or _FLOAT16; the values of gpt3d::DType in common/dtype.h);
// row_ptr/col_idx (forward) and col_ptr/row_idx (backward) are the compact layout described in block_math.h.
// Return 0 on success, a cudaError_t value on a CUDA error, or kSparseAttentionSmemTooLarge when a block x head_dim
// tile set does not fit the device's shared memory (gpt3d_sparse_attention_cuda_smem_bytes tells how much it needs).
#pragma once

#include <stdint.h>

#define GPT3D_SPARSE_SMEM_TOO_LARGE (-1)
#define GPT3D_SPARSE_FLOAT32 0
#define GPT3D_SPARSE_BFLOAT16 1
#define GPT3D_SPARSE_FLOAT16 2

#ifdef __cplusplus
extern "C" {
#endif

// Dynamic shared memory (bytes) of kernel 0 = forward, 1 = backward dQ, 2 = backward dK/dV.
int64_t gpt3d_sparse_attention_cuda_smem_bytes(int kernel, int64_t block, int64_t dim);

int gpt3d_sparse_attention_forward_cuda(const void* q, const void* k, const void* v, void* out, float* lse,
                                        const int32_t* row_ptr, const int32_t* col_idx, int64_t batch, int64_t heads,
                                        int64_t seq, int64_t dim, int64_t block, float scale, int dtype,
                                        void* stream);

// `delta` is a float workspace of batch * heads * seq elements.
int gpt3d_sparse_attention_backward_cuda(const void* dout, const void* q, const void* k, const void* v,
                                         const void* out, const float* lse, void* dq, void* dk, void* dv, float* delta,
                                         const int32_t* row_ptr, const int32_t* col_idx, const int32_t* col_ptr,
                                         const int32_t* row_idx, int64_t batch, int64_t heads, int64_t seq,
                                         int64_t dim, int64_t block, float scale, int dtype, void* stream);

#ifdef __cplusplus
}
#endif
