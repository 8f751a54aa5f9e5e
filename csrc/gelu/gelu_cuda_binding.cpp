// CUDA implementation of the GELU ops (schemas in gelu_binding.cpp): torch tensors in, torch-free launchers of
// gelu_cuda.cu called on the current stream. Compiled only in a CUDA build (setup.py defines GPT3D_WITH_CUDA).
#ifdef GPT3D_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include "common/cuda_launch.h"
#include "gelu/gelu_cuda.h"
#include "gelu/gelu_torch.h"

namespace gpt3d {
namespace {

at::Tensor gelu_tanh_fwd_cuda(const at::Tensor& x) {
  const char* op = "gpt3d_C::gelu_tanh_fwd";
  auto c = prepare_gelu(op, c10::DeviceType::CUDA, x, c10::nullopt);
  if (c.args.n == 0) return c.out;
  const c10::cuda::CUDAGuard guard(c.x.device());
  check_launch(op, gpt3d_gelu_forward_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return c.out;
}

at::Tensor gelu_tanh_bwd_cuda(const at::Tensor& dy, const at::Tensor& x) {
  const char* op = "gpt3d_C::gelu_tanh_bwd";
  auto c = prepare_gelu(op, c10::DeviceType::CUDA, x, dy);
  if (c.args.n == 0) return c.out;
  const c10::cuda::CUDAGuard guard(c.x.device());
  check_launch(op, gpt3d_gelu_backward_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return c.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt3d_C, CUDA, m) {
  m.impl("gelu_tanh_fwd", &gelu_tanh_fwd_cuda);
  m.impl("gelu_tanh_bwd", &gelu_tanh_bwd_cuda);
}

}  // namespace gpt3d
#endif  // GPT3D_WITH_CUDA
