// LayerNorm ops: schemas (shared by every backend) and the CPU implementation.
//   gpt3d_C::layer_norm_fwd(x, weight, bias, eps)               -> (y, mean, rstd)
//   gpt3d_C::add_layer_norm_fwd(x, residual, weight, bias, eps) -> (x + residual, y, mean, rstd)
//   gpt3d_C::layer_norm_bwd(dy, dsum?, x, mean, rstd, weight)   -> (dx, dweight, dbias)
// x is [..., hidden]; mean/rstd are fp32 [...]; dsum (the gradient of x + residual) is added to dx. Autograd is in
// layer_norm_autograd.cpp; fake (meta) kernels are registered from Python (gpt3d/kernels/layer_norm.py).
#include <torch/extension.h>

#include "layer_norm/layer_norm_cpu.h"
#include "layer_norm/layer_norm_torch.h"

namespace gpt3d {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                                  const at::Tensor& bias, double eps) {
  auto c = prepare_layer_norm_forward("gpt3d_C::layer_norm_fwd", c10::DeviceType::CPU, x, c10::nullopt, weight, bias,
                                      eps);
  if (c.args.rows > 0) layer_norm_forward_cpu(c.args);
  return {c.y, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_cpu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  auto c = prepare_layer_norm_forward("gpt3d_C::add_layer_norm_fwd", c10::DeviceType::CPU, x, residual, weight, bias,
                                      eps);
  if (c.args.rows > 0) layer_norm_forward_cpu(c.args);
  return {c.sum, c.y, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cpu(const at::Tensor& dy,
                                                                  const c10::optional<at::Tensor>& dsum,
                                                                  const at::Tensor& x, const at::Tensor& mean,
                                                                  const at::Tensor& rstd, const at::Tensor& weight) {
  auto c = prepare_layer_norm_backward("gpt3d_C::layer_norm_bwd", c10::DeviceType::CPU, dy, dsum, x, mean, rstd,
                                       weight);
  if (c.args.rows > 0) layer_norm_backward_cpu(c.args);
  return {c.dx, c.dweight, c.dbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("add_layer_norm_fwd(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("layer_norm_bwd(Tensor dy, Tensor? dsum, Tensor x, Tensor mean, Tensor rstd, Tensor weight) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gpt3d_C, CPU, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cpu);
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd_cpu);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cpu);
}

}  // namespace gpt3d
