// CUDA implementation of the softmax ops (schemas in softmax_binding.cpp): torch tensors in, torch-free launchers of
// softmax_cuda.cu called on the current stream. Compiled only in a CUDA build (setup.py defines GPT3D_WITH_CUDA).
#ifdef GPT3D_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include "common/cuda_launch.h"
#include "softmax/softmax_cuda.h"
#include "softmax/softmax_torch.h"

namespace gpt3d {
namespace {

at::Tensor forward(const char* op, const at::Tensor& scores, const c10::optional<at::Tensor>& mask, double scale,
                   bool causal) {
  auto c = prepare_softmax_forward(op, c10::DeviceType::CUDA, scores, mask, scale, causal);
  const c10::cuda::CUDAGuard guard(c.scores.device());
  check_launch(op, gpt3d_softmax_forward_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return c.y;
}

at::Tensor scaled_masked_softmax_fwd_cuda(const at::Tensor& scores, const c10::optional<at::Tensor>& mask,
                                          double scale) {
  return forward("gpt3d_C::scaled_masked_softmax_fwd", scores, mask, scale, false);
}

at::Tensor scaled_causal_softmax_fwd_cuda(const at::Tensor& scores, double scale) {
  return forward("gpt3d_C::scaled_causal_softmax_fwd", scores, c10::nullopt, scale, true);
}

at::Tensor scaled_softmax_bwd_cuda(const at::Tensor& dy, const at::Tensor& y, double scale, bool causal) {
  const char* op = "gpt3d_C::scaled_softmax_bwd";
  auto c = prepare_softmax_backward(op, c10::DeviceType::CUDA, dy, y, scale, causal);
  const c10::cuda::CUDAGuard guard(c.y.device());
  check_launch(op, gpt3d_softmax_backward_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return c.dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt3d_C, CUDA, m) {
  m.impl("scaled_masked_softmax_fwd", &scaled_masked_softmax_fwd_cuda);
  m.impl("scaled_causal_softmax_fwd", &scaled_causal_softmax_fwd_cuda);
  m.impl("scaled_softmax_bwd", &scaled_softmax_bwd_cuda);
}

}  // namespace gpt3d
#endif  // GPT3D_WITH_CUDA
