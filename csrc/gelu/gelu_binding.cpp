// GELU (tanh approximation) ops: schemas (shared by every backend) and the CPU implementation.
//   gpt3d_C::gelu_tanh_fwd(x)     -> gelu(x)
//   gpt3d_C::gelu_tanh_bwd(dy, x) -> dx
// Any shape; float32 / bfloat16 on CPU (plus float16 on CUDA), math in fp32. Autograd is in gelu_autograd.cpp; fake
// (meta) kernels are registered from Python (gpt3d/kernels/gelu.py).
#include <torch/extension.h>

#include "gelu/gelu_cpu.h"
#include "gelu/gelu_torch.h"

namespace gpt3d {
namespace {

at::Tensor gelu_tanh_fwd_cpu(const at::Tensor& x) {
  auto c = prepare_gelu("gpt3d_C::gelu_tanh_fwd", c10::DeviceType::CPU, x, c10::nullopt);
  if (c.args.n > 0) gelu_forward_cpu(c.args);
  return c.out;
}

at::Tensor gelu_tanh_bwd_cpu(const at::Tensor& dy, const at::Tensor& x) {
  auto c = prepare_gelu("gpt3d_C::gelu_tanh_bwd", c10::DeviceType::CPU, x, dy);
  if (c.args.n > 0) gelu_backward_cpu(c.args);
  return c.out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("gelu_tanh_fwd(Tensor x) -> Tensor");
  m.def("gelu_tanh_bwd(Tensor dy, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(gpt3d_C, CPU, m) {
  m.impl("gelu_tanh_fwd", &gelu_tanh_fwd_cpu);
  m.impl("gelu_tanh_bwd", &gelu_tanh_bwd_cpu);
}

}  // namespace gpt3d
