// Scaled masked softmax ops: schemas (shared by every backend) and the CPU implementation.
//   gpt3d_C::scaled_masked_softmax_fwd(scores [b,h,sq,sk], mask? [b|1,h|1,sq,sk] bool, scale) -> y
//   gpt3d_C::scaled_causal_softmax_fwd(scores [..., sq, sk], scale) -> y      (implicit causal mask, no tensor read)
//   gpt3d_C::scaled_softmax_bwd(dy, y, scale, causal) -> dscores
// Autograd and fake (meta) kernels are registered from Python (gpt3d/kernels/softmax.py).
#include <torch/extension.h>

#include "softmax/softmax_cpu.h"
#include "softmax/softmax_torch.h"

namespace gpt3d {
namespace {

at::Tensor scaled_masked_softmax_fwd_cpu(const at::Tensor& scores, const c10::optional<at::Tensor>& mask,
                                         double scale) {
  auto c = prepare_softmax_forward("gpt3d_C::scaled_masked_softmax_fwd", c10::DeviceType::CPU, scores, mask, scale,
                                   false);
  if (c.scores.numel() > 0) softmax_forward_cpu(c.args);
  return c.y;
}

at::Tensor scaled_causal_softmax_fwd_cpu(const at::Tensor& scores, double scale) {
  auto c = prepare_softmax_forward("gpt3d_C::scaled_causal_softmax_fwd", c10::DeviceType::CPU, scores, c10::nullopt,
                                   scale, true);
  if (c.scores.numel() > 0) softmax_forward_cpu(c.args);
  return c.y;
}

at::Tensor scaled_softmax_bwd_cpu(const at::Tensor& dy, const at::Tensor& y, double scale, bool causal) {
  auto c = prepare_softmax_backward("gpt3d_C::scaled_softmax_bwd", c10::DeviceType::CPU, dy, y, scale, causal);
  if (c.y.numel() > 0) softmax_backward_cpu(c.args);
  return c.dx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("scaled_masked_softmax_fwd(Tensor scores, Tensor? mask, float scale) -> Tensor");
  m.def("scaled_causal_softmax_fwd(Tensor scores, float scale) -> Tensor");
  m.def("scaled_softmax_bwd(Tensor dy, Tensor y, float scale, bool causal) -> Tensor");
}

TORCH_LIBRARY_IMPL(gpt3d_C, CPU, m) {
  m.impl("scaled_masked_softmax_fwd", &scaled_masked_softmax_fwd_cpu);
  m.impl("scaled_causal_softmax_fwd", &scaled_causal_softmax_fwd_cpu);
  m.impl("scaled_softmax_bwd", &scaled_softmax_bwd_cpu);
}

}  // namespace gpt3d
