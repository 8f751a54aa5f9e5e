// Torch side of the softmax ops shared by the CPU and CUDA bindings: input checks (before any work or allocation),
// then contiguous inputs, allocated outputs and the torch-free kernel arguments.
#pragma once
#include <torch/extension.h>

#include "common/torch_checks.h"
#include "softmax/softmax_args.h"

namespace gpt3d {

inline void check_softmax_scores(const char* op, const at::Tensor& scores, bool causal) {
  kernel_dtype(op, "scores", scores);
  if (causal) {
    TORCH_CHECK(scores.dim() >= 2, op, ": scores must be [..., sq, sk], got shape ", shape_str(scores));
  } else {
    TORCH_CHECK(scores.dim() == 4, op, ": scores must be [batch, heads, sq, sk], got shape ", shape_str(scores));
  }
}

inline void check_softmax_mask(const char* op, const at::Tensor& scores, const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask has dtype ", mask.scalar_type(),
              " but must be bool (True = masked out); pass mask.bool() or (mask == 0) as your convention requires");
  const bool ok = mask.dim() == 4 && (mask.size(0) == 1 || mask.size(0) == scores.size(0)) &&
                  (mask.size(1) == 1 || mask.size(1) == scores.size(1)) && mask.size(2) == scores.size(2) &&
                  mask.size(3) == scores.size(3);
  TORCH_CHECK(ok, op, ": mask has shape ", shape_str(mask), " but scores have shape ", shape_str(scores),
              "; the mask must be [", scores.size(0), " or 1, ", scores.size(1), " or 1, ", scores.size(2), ", ",
              scores.size(3), "]");
  check_same_device(op, "mask", mask, scores, "scores");
}

inline void check_softmax_backward(const char* op, const at::Tensor& dy, const at::Tensor& y) {
  kernel_dtype(op, "y", y);
  TORCH_CHECK(y.dim() >= 2, op, ": y must be [..., sq, sk], got shape ", shape_str(y));
  check_same_shape(op, "dy", dy, y, "y");
  check_same_dtype(op, "dy", dy, y, "y");
  check_same_device(op, "dy", dy, y, "y");
}

struct SoftmaxForwardCall {
  at::Tensor scores, mask, y;
  SoftmaxForwardArgs args;
};

inline SoftmaxForwardCall prepare_softmax_forward(const char* op, c10::DeviceType device, const at::Tensor& scores_in,
                                                  const c10::optional<at::Tensor>& mask_in, double scale, bool causal) {
  check_softmax_scores(op, scores_in, causal);
  if (mask_in) check_softmax_mask(op, scores_in, *mask_in);
  check_kernel_device(op, scores_in, device);
  SoftmaxForwardCall c;
  c.scores = scores_in.contiguous();
  c.y = at::empty_like(c.scores);
  const int64_t sq = c.scores.size(-2), sk = c.scores.size(-1);
  c.args = SoftmaxForwardArgs{c.scores.data_ptr(), c.y.data_ptr(), nullptr, 0, 0, 0,
                              sq * sk != 0 ? c.scores.numel() / (sq * sk) : 0, 1, sq, sk, causal,
                              static_cast<float>(scale), kernel_dtype(op, "scores", c.scores)};
  if (mask_in) {
    c.mask = mask_in->stride(3) == 1 ? *mask_in : mask_in->contiguous();  // broadcast (stride-0) dims are kept
    c.args.mask = c.mask.data_ptr<bool>();
    c.args.batch = c.scores.size(0);
    c.args.heads = c.scores.size(1);
    c.args.mask_stride_b = c.mask.size(0) == 1 ? 0 : c.mask.stride(0);
    c.args.mask_stride_h = c.mask.size(1) == 1 ? 0 : c.mask.stride(1);
    c.args.mask_stride_q = c.mask.stride(2);
  }
  return c;
}

struct SoftmaxBackwardCall {
  at::Tensor dy, y, dx;
  SoftmaxBackwardArgs args;
};

inline SoftmaxBackwardCall prepare_softmax_backward(const char* op, c10::DeviceType device, const at::Tensor& dy_in,
                                                    const at::Tensor& y_in, double scale, bool causal) {
  check_softmax_backward(op, dy_in, y_in);
  check_kernel_device(op, y_in, device);
  SoftmaxBackwardCall c;
  c.dy = dy_in.contiguous();
  c.y = y_in.contiguous();
  c.dx = at::empty_like(c.y);
  const int64_t sq = c.y.size(-2), sk = c.y.size(-1);
  c.args = SoftmaxBackwardArgs{c.dy.data_ptr(), c.y.data_ptr(), c.dx.data_ptr(), sk ? c.y.numel() / sk : 0, sq, sk,
                               causal, static_cast<float>(scale), kernel_dtype(op, "y", c.y)};
  return c;
}

}  // namespace gpt3d
