// Torch side of the cross-entropy ops shared by the CPU and CUDA bindings: input checks (before any work), then the
// torch-free kernel arguments. The logits must be a contiguous [rows, cols] matrix: the backward writes into them.
#pragma once
#include <torch/extension.h>

#include "common/torch_checks.h"
#include "cross_entropy/cross_entropy_args.h"

namespace gpt3d {

inline void check_logits(const char* op, const at::Tensor& logits, int64_t real_cols) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be [rows, cols], got shape ", shape_str(logits),
              "; flatten the leading dimensions");
  TORCH_CHECK(logits.is_contiguous(), op, ": logits must be contiguous (the backward overwrites them in place); "
              "call .contiguous() first");
  TORCH_CHECK(real_cols >= 0 && real_cols <= logits.size(1), op, ": real_cols must lie in [0, ", logits.size(1),
              "] (the logits' columns), got ", real_cols);
}

inline void check_rows(const char* op, const char* name, const at::Tensor& t, const at::Tensor& logits,
                       at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), op, ": ", name, " must be [", logits.size(0),
              "] (one per row of logits), got shape ", shape_str(t));
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  check_same_device(op, name, t, logits, "logits");
}

struct LogSumExpCall {
  at::Tensor lse;
  LogSumExpArgs args;
};

inline LogSumExpCall prepare_logsumexp(const char* op, c10::DeviceType device, const at::Tensor& logits,
                                       int64_t real_cols) {
  const DType dtype = kernel_dtype(op, "logits", logits);
  check_logits(op, logits, real_cols);
  check_kernel_device(op, logits, device);
  LogSumExpCall c;
  c.lse = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  c.args = LogSumExpArgs{logits.data_ptr(), c.lse.data_ptr<float>(), logits.size(0), logits.size(1), real_cols,
                         dtype};
  return c;
}

inline CrossEntropyBackwardArgs prepare_cross_entropy_backward(const char* op, c10::DeviceType device,
                                                               const at::Tensor& logits, const at::Tensor& lse,
                                                               const at::Tensor& labels, const at::Tensor& scale,
                                                               int64_t real_cols) {
  const DType dtype = kernel_dtype(op, "logits", logits);
  check_logits(op, logits, real_cols);
  check_kernel_device(op, logits, device);
  check_rows(op, "lse", lse, logits, at::kFloat);
  check_rows(op, "labels", labels, logits, at::kLong);
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == at::kFloat, op,
              ": scale must be one float32 value (a 0-dim tensor), got shape ", shape_str(scale), " and dtype ",
              scale.scalar_type());
  check_same_device(op, "scale", scale, logits, "logits");
  return CrossEntropyBackwardArgs{logits.data_ptr(), lse.data_ptr<float>(), labels.data_ptr<int64_t>(),
                                  scale.data_ptr<float>(), logits.size(0), logits.size(1), real_cols, dtype};
}

}  // namespace gpt3d
