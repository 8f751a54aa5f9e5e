// Autograd of the LayerNorm ops, in C++ for every backend: forward saves (input or sum, weight, mean, rstd) and
// backward calls gpt3d_C::layer_norm_bwd. It replaced a torch.library autograd registered from Python, whose per-call
// overhead (about 0.1-0.2 ms a forward+backward) made small LayerNorms (256 rows) slower than torch's own, which has a
// C++ autograd; the kernels themselves were faster.
#include <torch/autograd.h>
#include <torch/extension.h>

namespace gpt3d {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Stats3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Stats4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Stats3 call_layer_norm_fwd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("gpt3d_C::layer_norm_fwd", "").typed<Stats3(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, weight, bias, eps);
}

Stats4 call_add_layer_norm_fwd(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                               const at::Tensor& bias, double eps) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("gpt3d_C::add_layer_norm_fwd", "").typed<Stats4(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, residual, weight, bias, eps);
}

Stats3 call_layer_norm_bwd(const at::Tensor& dy, const c10::optional<at::Tensor>& dsum, const at::Tensor& x,
                           const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("gpt3d_C::layer_norm_bwd", "").typed<Stats3(
      const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&)>();
  return op.call(dy, dsum, x, mean, rstd, weight);
}

// An output nobody used has an undefined gradient: its contribution is zero.
at::Tensor or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like);
}

class LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = call_layer_norm_fwd(x, weight, bias, eps);
    ctx->save_for_backward({x, weight, mean, rstd});
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dx, dweight, dbias] =
        call_layer_norm_bwd(or_zeros(grads[0], saved[0]), c10::nullopt, saved[0], saved[2], saved[3], saved[1]);
    return {dx, dweight, dbias, at::Tensor()};
  }
};

class AddLayerNormFunction : public torch::autograd::Function<AddLayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& residual,
                               const at::Tensor& weight, const at::Tensor& bias, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [total, y, mean, rstd] = call_add_layer_norm_fwd(x, residual, weight, bias, eps);
    ctx->save_for_backward({total, weight, mean, rstd});
    ctx->mark_non_differentiable({mean, rstd});
    return {total, y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& total = saved[0];
    c10::optional<at::Tensor> dtotal;
    if (grads[0].defined()) dtotal = grads[0];
    auto [dx, dweight, dbias] =
        call_layer_norm_bwd(or_zeros(grads[1], total), dtotal, total, saved[2], saved[3], saved[1]);
    return {dx, dx, dweight, dbias, at::Tensor()};  // d(x + residual)/dx = d/dresidual
  }
};

Stats3 layer_norm_fwd_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  auto out = LayerNormFunction::apply(x, weight, bias, eps);
  return {out[0], out[1], out[2]};
}

Stats4 add_layer_norm_fwd_autograd(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                   const at::Tensor& bias, double eps) {
  auto out = AddLayerNormFunction::apply(x, residual, weight, bias, eps);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gpt3d_C, Autograd, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_autograd);
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd_autograd);
}

}  // namespace gpt3d
