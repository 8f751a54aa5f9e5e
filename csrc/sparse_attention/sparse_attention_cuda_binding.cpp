// CUDA implementation of the gpt3d_C sparse attention ops: checks, then the torch-free launchers of
// sparse_attention.cu. Compiled only when torch has CUDA (setup.py defines GPT3D_WITH_CUDA and builds the .cu).
#ifdef GPT3D_WITH_CUDA

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // (ATen/cuda/CUDAContext.h would need cuSPARSE/cuBLAS headers)
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include "sparse_attention/checks.h"
#include "sparse_attention/sparse_attention_cuda.h"

namespace gpt3d_sparse {
namespace {

// `kernel`: the largest-smem kernel of the launch (0 = forward, 2 = backward dK/dV, which needs more than dQ).
void check_launch(int rc, int kernel, int64_t block, int64_t dim) {
  if (rc == GPT3D_SPARSE_SMEM_TOO_LARGE)
    TORCH_CHECK(false, "sparse attention (CUDA): block ", block, " with head_dim ", dim, " needs ",
                gpt3d_sparse_attention_cuda_smem_bytes(kernel, block, dim) / 1024,
                " KiB of shared memory, more than this GPU allows per block; use a smaller block (e.g. 32)");
  TORCH_CHECK(rc == 0, "sparse attention (CUDA): ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

int storage_dtype(const at::Tensor& q) {
  if (q.scalar_type() == at::kBFloat16) return GPT3D_SPARSE_BFLOAT16;
  return q.scalar_type() == at::kHalf ? GPT3D_SPARSE_FLOAT16 : GPT3D_SPARSE_FLOAT32;
}

at::Tensor on_device(const at::Tensor& t, const at::Tensor& like) { return t.to(like.device()).contiguous(); }

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                const at::Tensor& v_in, const at::Tensor& row_ptr,
                                                const at::Tensor& col_idx, int64_t block, double scale) {
  check_qkv(q_in, k_in, v_in, block);
  const int64_t nb = q_in.size(2) / block;
  check_compressed_layout(row_ptr, col_idx, q_in.size(1), nb, /*lower=*/true, "row (CSR) layout");
  const c10::cuda::CUDAGuard guard(q_in.device());  // launch on q's GPU, on that GPU's current stream
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor rp = on_device(row_ptr, q), ci = on_device(col_idx, q);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  const int rc = gpt3d_sparse_attention_forward_cuda(
      q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(), rp.data_ptr<int32_t>(),
      ci.data_ptr<int32_t>(), q.size(0), q.size(1), q.size(2), q.size(3), block, static_cast<float>(scale),
      storage_dtype(q), c10::cuda::getCurrentCUDAStream().stream());
  check_launch(rc, 0, block, q.size(3));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& row_ptr, const at::Tensor& col_idx,
    const at::Tensor& col_ptr, const at::Tensor& row_idx, int64_t block, double scale) {
  check_qkv(q_in, k_in, v_in, block);
  TORCH_CHECK(dout_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes() &&
                  dout_in.scalar_type() == q_in.scalar_type() && out_in.scalar_type() == q_in.scalar_type(),
              "sparse attention backward: grad_out and out must have q's shape and dtype");
  TORCH_CHECK(lse_in.scalar_type() == at::kFloat && lse_in.numel() == q_in.size(0) * q_in.size(1) * q_in.size(2),
              "sparse attention backward: lse must be float32 [batch, heads, seq] from the forward");
  const int64_t nb = q_in.size(2) / block;
  check_compressed_layout(row_ptr, col_idx, q_in.size(1), nb, /*lower=*/true, "row (CSR) layout");
  check_compressed_layout(col_ptr, row_idx, q_in.size(1), nb, /*lower=*/false, "column (CSC) layout");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor dout = dout_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor out = out_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor rp = on_device(row_ptr, q), ci = on_device(col_idx, q);
  const at::Tensor cp = on_device(col_ptr, q), ri = on_device(row_idx, q);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  at::Tensor delta = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  const int rc = gpt3d_sparse_attention_backward_cuda(
      dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(),
      dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), delta.data_ptr<float>(), rp.data_ptr<int32_t>(),
      ci.data_ptr<int32_t>(), cp.data_ptr<int32_t>(), ri.data_ptr<int32_t>(), q.size(0), q.size(1), q.size(2),
      q.size(3), block, static_cast<float>(scale), storage_dtype(q),
      c10::cuda::getCurrentCUDAStream().stream());
  check_launch(rc, 2, block, q.size(3));
  return {dq, dk, dv};
}

}  // namespace
}  // namespace gpt3d_sparse

TORCH_LIBRARY_IMPL(gpt3d_C, CUDA, m) {
  m.impl("sparse_attention_forward", &gpt3d_sparse::forward_cuda);
  m.impl("sparse_attention_backward", &gpt3d_sparse::backward_cuda);
}

#endif  // GPT3D_WITH_CUDA
