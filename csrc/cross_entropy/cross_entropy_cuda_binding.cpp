// CUDA implementation of the cross-entropy ops (schemas in cross_entropy_binding.cpp): torch tensors in, torch-free
// launchers of cross_entropy_cuda.cu called on the current stream. Compiled only in a CUDA build (setup.py defines
// GPT3D_WITH_CUDA).
#ifdef GPT3D_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include "common/cuda_launch.h"
#include "cross_entropy/cross_entropy_cuda.h"
#include "cross_entropy/cross_entropy_torch.h"

namespace gpt3d {
namespace {

at::Tensor logsumexp_rows_cuda_op(const at::Tensor& logits, int64_t real_cols) {
  const char* op = "gpt3d_C::logsumexp_rows";
  auto c = prepare_logsumexp(op, c10::DeviceType::CUDA, logits, real_cols);
  if (c.args.rows == 0) return c.lse;
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(op, gpt3d_logsumexp_rows_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return c.lse;
}

void cross_entropy_bwd_cuda_op(at::Tensor& logits, const at::Tensor& lse, const at::Tensor& labels,
                               const at::Tensor& scale, int64_t real_cols) {
  const char* op = "gpt3d_C::cross_entropy_bwd_";
  const auto args = prepare_cross_entropy_backward(op, c10::DeviceType::CUDA, logits, lse, labels, scale, real_cols);
  if (args.rows == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(op, gpt3d_cross_entropy_backward_cuda(&args, c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt3d_C, CUDA, m) {
  m.impl("logsumexp_rows", &logsumexp_rows_cuda_op);
  m.impl("cross_entropy_bwd_", &cross_entropy_bwd_cuda_op);
}

}  // namespace gpt3d
#endif  // GPT3D_WITH_CUDA
