// CUDA implementation of the LayerNorm ops (schemas in layer_norm_binding.cpp): torch tensors in, torch-free launchers
// of layer_norm_cuda.cu called on the current stream. Compiled only in a CUDA build (setup.py defines GPT3D_WITH_CUDA).
#ifdef GPT3D_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include "common/cuda_launch.h"
#include "layer_norm/layer_norm_cuda.h"
#include "layer_norm/layer_norm_torch.h"

namespace gpt3d {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                                   const at::Tensor& bias, double eps) {
  const char* op = "gpt3d_C::layer_norm_fwd";
  auto c = prepare_layer_norm_forward(op, c10::DeviceType::CUDA, x, c10::nullopt, weight, bias, eps);
  const c10::cuda::CUDAGuard guard(c.x.device());
  check_launch(op, gpt3d_layer_norm_forward_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return {c.y, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_cuda(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const char* op = "gpt3d_C::add_layer_norm_fwd";
  auto c = prepare_layer_norm_forward(op, c10::DeviceType::CUDA, x, residual, weight, bias, eps);
  const c10::cuda::CUDAGuard guard(c.x.device());
  check_launch(op, gpt3d_layer_norm_forward_cuda(&c.args, c10::cuda::getCurrentCUDAStream().stream()));
  return {c.sum, c.y, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cuda(const at::Tensor& dy,
                                                                   const c10::optional<at::Tensor>& dsum,
                                                                   const at::Tensor& x, const at::Tensor& mean,
                                                                   const at::Tensor& rstd, const at::Tensor& weight) {
  const char* op = "gpt3d_C::layer_norm_bwd";
  auto c = prepare_layer_norm_backward(op, c10::DeviceType::CUDA, dy, dsum, x, mean, rstd, weight);
  const c10::cuda::CUDAGuard guard(c.x.device());
  at::Tensor workspace = at::empty({gpt3d_layer_norm_backward_workspace_floats(c.args.rows, c.args.cols)},
                                   c.x.options().dtype(at::kFloat));
  check_launch(op, gpt3d_layer_norm_backward_cuda(&c.args, workspace.data_ptr<float>(),
                                                  c10::cuda::getCurrentCUDAStream().stream()));
  return {c.dx, c.dweight, c.dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt3d_C, CUDA, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cuda);
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cuda);
}

}  // namespace gpt3d
#endif  // GPT3D_WITH_CUDA
