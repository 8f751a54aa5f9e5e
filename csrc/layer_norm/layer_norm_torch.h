// Torch side of the LayerNorm ops shared by the CPU and CUDA bindings: input checks (before any work or allocation),
// then contiguous inputs, allocated outputs and the torch-free kernel arguments.
#pragma once
#include <torch/extension.h>

#include "common/torch_checks.h"
#include "layer_norm/layer_norm_args.h"

namespace gpt3d {

inline void check_layer_norm_weight_dtype(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  kernel_dtype(op, "x", x);
  kernel_dtype(op, "weight", weight);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == at::kFloat, op,
              ": weight has dtype ", weight.scalar_type(), " but x has dtype ", x.scalar_type(),
              "; weight must have x's dtype or float32");
}

inline void check_layer_norm_inputs(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (the normalised one), got a scalar");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight has shape ", shape_str(weight),
              " but x's last dimension is ", x.size(-1), "; weight must be [", x.size(-1), "]");
  check_same_shape(op, "bias", bias, weight, "weight");
  check_layer_norm_weight_dtype(op, x, weight);
  check_same_dtype(op, "bias", bias, weight, "weight");
  check_same_device(op, "weight", weight, x, "x");
  check_same_device(op, "bias", bias, x, "x");
  if (residual) {
    check_same_shape(op, "residual", *residual, x, "x");
    check_same_dtype(op, "residual", *residual, x, "x");
    check_same_device(op, "residual", *residual, x, "x");
  }
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  TORCH_CHECK(x.size(-1) > 0 || x.numel() == 0, op, ": x's last dimension is 0; nothing to normalise");
}

inline void check_layer_norm_backward_inputs(const char* op, const at::Tensor& dy,
                                             const c10::optional<at::Tensor>& dsum, const at::Tensor& x,
                                             const at::Tensor& mean, const at::Tensor& rstd,
                                             const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension, got a scalar");
  check_same_shape(op, "dy", dy, x, "x");
  check_same_dtype(op, "dy", dy, x, "x");
  check_same_device(op, "dy", dy, x, "x");
  if (dsum) {
    check_same_shape(op, "dsum", *dsum, x, "x");
    check_same_dtype(op, "dsum", *dsum, x, "x");
    check_same_device(op, "dsum", *dsum, x, "x");
  }
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight has shape ", shape_str(weight),
              " but x's last dimension is ", x.size(-1));
  check_layer_norm_weight_dtype(op, x, weight);
  check_same_device(op, "weight", weight, x, "x");
  for (const at::Tensor* s : {&mean, &rstd}) {
    const char* name = s == &mean ? "mean" : "rstd";
    TORCH_CHECK(s->scalar_type() == at::kFloat, op, ": ", name, " must be float32 (as saved by forward), got ",
                s->scalar_type());
    TORCH_CHECK(s->numel() * x.size(-1) == x.numel() && s->dim() == x.dim() - 1, op, ": ", name, " has shape ",
                shape_str(*s), " but x has shape ", shape_str(x), "; pass the statistics saved by forward");
    check_same_device(op, name, *s, x, "x");
  }
}

struct LayerNormForwardCall {
  at::Tensor x, residual, weight, bias, y, sum, mean, rstd;
  LayerNormForwardArgs args;
};

inline LayerNormForwardCall prepare_layer_norm_forward(const char* op, c10::DeviceType device, const at::Tensor& x_in,
                                                       const c10::optional<at::Tensor>& residual_in,
                                                       const at::Tensor& weight_in, const at::Tensor& bias_in,
                                                       double eps) {
  check_layer_norm_inputs(op, x_in, residual_in, weight_in, bias_in, eps);
  check_kernel_device(op, x_in, device);
  LayerNormForwardCall c;
  c.x = x_in.contiguous();
  c.weight = weight_in.contiguous();
  c.bias = bias_in.contiguous();
  if (residual_in) c.residual = residual_in->contiguous();
  c.y = at::empty_like(c.x);
  if (residual_in) c.sum = at::empty_like(c.x);
  c.mean = at::empty(c.x.sizes().slice(0, c.x.dim() - 1), c.x.options().dtype(at::kFloat));
  c.rstd = at::empty_like(c.mean);
  const int64_t cols = c.x.size(-1);
  c.args = LayerNormForwardArgs{c.x.data_ptr(), residual_in ? c.residual.data_ptr() : nullptr, c.weight.data_ptr(),
                                c.bias.data_ptr(), c.y.data_ptr(), residual_in ? c.sum.data_ptr() : nullptr,
                                c.mean.data_ptr<float>(), c.rstd.data_ptr<float>(), cols ? c.x.numel() / cols : 0,
                                cols, static_cast<float>(eps), kernel_dtype(op, "x", c.x),
                                kernel_dtype(op, "weight", c.weight)};
  return c;
}

struct LayerNormBackwardCall {
  at::Tensor dy, dsum, x, mean, rstd, weight, dx, dweight, dbias;
  LayerNormBackwardArgs args;
};

inline LayerNormBackwardCall prepare_layer_norm_backward(const char* op, c10::DeviceType device, const at::Tensor& dy_in,
                                                         const c10::optional<at::Tensor>& dsum_in,
                                                         const at::Tensor& x_in, const at::Tensor& mean_in,
                                                         const at::Tensor& rstd_in, const at::Tensor& weight_in) {
  check_layer_norm_backward_inputs(op, dy_in, dsum_in, x_in, mean_in, rstd_in, weight_in);
  check_kernel_device(op, x_in, device);
  LayerNormBackwardCall c;
  c.dy = dy_in.contiguous();
  if (dsum_in) c.dsum = dsum_in->contiguous();
  c.x = x_in.contiguous();
  c.mean = mean_in.contiguous();
  c.rstd = rstd_in.contiguous();
  c.weight = weight_in.contiguous();
  c.dx = at::empty_like(c.x);
  c.dweight = at::zeros_like(c.weight);
  c.dbias = at::zeros_like(c.weight);
  const int64_t cols = c.x.size(-1);
  c.args = LayerNormBackwardArgs{c.dy.data_ptr(), dsum_in ? c.dsum.data_ptr() : nullptr, c.x.data_ptr(),
                                 c.mean.data_ptr<float>(), c.rstd.data_ptr<float>(), c.weight.data_ptr(),
                                 c.dx.data_ptr(), c.dweight.data_ptr(), c.dbias.data_ptr(),
                                 cols ? c.x.numel() / cols : 0, cols, kernel_dtype(op, "x", c.x),
                                 kernel_dtype(op, "weight", c.weight)};
  return c;
}

}  // namespace gpt3d
