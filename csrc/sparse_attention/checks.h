// Input checks of the block-sparse attention ops, shared by the CPU and CUDA bindings. Each failure names the
// problem and the fix (the Python wrapper checks first; these guard direct torch.ops.gpt3d_C calls).
#pragma once

#include <torch/extension.h>

namespace gpt3d_sparse {

inline void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t block) {
  TORCH_CHECK(q.dim() == 4, "sparse attention: q must be [batch, heads, seq, head_dim], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "sparse attention: q, k, v must have the same shape, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 ||
                  (q.scalar_type() == at::kHalf && q.is_cuda()),
              "sparse attention: dtype must be float32 or bfloat16 (or float16 on CUDA), got ", q.scalar_type(),
              "; cast q, k, v first");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "sparse attention: q, k, v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), "sparse attention: q, k, v on different devices");
  TORCH_CHECK(block == 16 || block == 32 || block == 64, "sparse attention: block must be 16, 32 or 64, got ", block);
  TORCH_CHECK(q.size(2) % block == 0, "sparse attention: seq_len ", q.size(2), " is not a multiple of the block ",
              block, "; pad the sequence to a multiple of ", block);
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= 256, "sparse attention: head_dim must be in [1, 256], got ", q.size(3));
}

// `ptr` [heads * nb + 1] and `idx` [nnz] (int32, on the CPU or q's device) describe, per (head, block), the blocks on
// the other axis; `lower` says the indices must be <= the block's own index (CSR of a causal layout), else >= (CSC).
inline void check_compressed_layout(const at::Tensor& ptr, const at::Tensor& idx, int64_t heads, int64_t nb,
                                    bool lower, const char* what) {
  TORCH_CHECK(ptr.scalar_type() == at::kInt && idx.scalar_type() == at::kInt, "sparse attention: ", what,
              " arrays must be int32; build them with gpt3d.kernels.sparse_attention.compile_layout(layout)");
  TORCH_CHECK(ptr.dim() == 1 && ptr.numel() == heads * nb + 1, "sparse attention: ", what, " pointer array has ",
              ptr.numel(), " entries, expected heads * nb + 1 = ", heads * nb + 1,
              "; the layout does not match q (heads=", heads, ", blocks=", nb, ")");
  TORCH_CHECK(idx.dim() == 1, "sparse attention: ", what, " index array must be 1-D");
  const at::Tensor p = ptr.cpu().contiguous(), x = idx.cpu().contiguous();
  const int32_t* pp = p.data_ptr<int32_t>();
  const int32_t* xx = x.data_ptr<int32_t>();
  TORCH_CHECK(pp[0] == 0 && pp[heads * nb] == x.numel(), "sparse attention: ", what, " pointer array is corrupt");
  for (int64_t r = 0; r < heads * nb; ++r) {
    TORCH_CHECK(pp[r] <= pp[r + 1], "sparse attention: ", what, " pointer array is not non-decreasing");
    const int64_t self = r % nb;
    if (lower) TORCH_CHECK(pp[r] < pp[r + 1], "sparse attention: query block ", self, " of head ", r / nb,
                           " attends to no key block; every layout row needs its diagonal block");
    for (int32_t e = pp[r]; e < pp[r + 1]; ++e) {
      const bool ok = lower ? (xx[e] >= 0 && xx[e] <= self) : (xx[e] >= self && xx[e] < nb);
      TORCH_CHECK(ok, "sparse attention: ", what, " entry ", xx[e], " for block ", self,
                  " breaks causality or is out of range; the layout must be lower-block-triangular");
    }
  }
}

}  // namespace gpt3d_sparse
