// Cross-entropy ops: schemas (shared by every backend) and the CPU implementation.
//   gpt3d_C::logsumexp_rows(logits, real_cols) -> lse
//       lse[r] = log sum_{j < real_cols} exp(logits[r, j]), fp32, for logits [rows, cols]
//   gpt3d_C::cross_entropy_bwd_(logits!, lse, labels, scale, real_cols)
//       logits <- scale * (softmax - one-hot(labels)) over the first real_cols columns, 0 in the rest, in place
// float32 / bfloat16 logits on CPU (plus float16 on CUDA), math in fp32. The loss itself is lse - logits[label]
// (gpt3d/model/cross_entropy.py, which also owns the autograd and the fake kernels).
#include <torch/extension.h>

#include "cross_entropy/cross_entropy_cpu.h"
#include "cross_entropy/cross_entropy_torch.h"

namespace gpt3d {
namespace {

at::Tensor logsumexp_rows_cpu_op(const at::Tensor& logits, int64_t real_cols) {
  auto c = prepare_logsumexp("gpt3d_C::logsumexp_rows", c10::DeviceType::CPU, logits, real_cols);
  if (c.args.rows > 0) logsumexp_rows_cpu(c.args);
  return c.lse;
}

void cross_entropy_bwd_cpu_op(at::Tensor& logits, const at::Tensor& lse, const at::Tensor& labels,
                              const at::Tensor& scale, int64_t real_cols) {
  const auto args = prepare_cross_entropy_backward("gpt3d_C::cross_entropy_bwd_", c10::DeviceType::CPU, logits, lse,
                                                   labels, scale, real_cols);
  if (args.rows > 0) cross_entropy_backward_cpu(args);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("logsumexp_rows(Tensor logits, int real_cols) -> Tensor");
  m.def("cross_entropy_bwd_(Tensor(a!) logits, Tensor lse, Tensor labels, Tensor scale, int real_cols) -> ()");
}

TORCH_LIBRARY_IMPL(gpt3d_C, CPU, m) {
  m.impl("logsumexp_rows", &logsumexp_rows_cpu_op);
  m.impl("cross_entropy_bwd_", &cross_entropy_bwd_cpu_op);
}

}  // namespace gpt3d
