// Torch side of the GELU ops shared by the CPU and CUDA bindings: input checks (before any work or allocation), then
// contiguous inputs, the allocated output and the torch-free kernel arguments.
#pragma once
#include <torch/extension.h>

#include "common/torch_checks.h"
#include "gelu/gelu_args.h"

namespace gpt3d {

struct GeluCall {
  at::Tensor x, dy, out;
  GeluArgs args;
};

inline GeluCall prepare_gelu(const char* op, c10::DeviceType device, const at::Tensor& x_in,
                             const c10::optional<at::Tensor>& dy_in) {
  const DType dtype = kernel_dtype(op, "x", x_in);
  if (dy_in) {
    check_same_shape(op, "dy", *dy_in, x_in, "x");
    check_same_dtype(op, "dy", *dy_in, x_in, "x");
    check_same_device(op, "dy", *dy_in, x_in, "x");
  }
  check_kernel_device(op, x_in, device);
  GeluCall c;
  c.x = x_in.contiguous();
  if (dy_in) c.dy = dy_in->contiguous();
  c.out = at::empty_like(c.x);
  c.args = GeluArgs{c.x.data_ptr(), dy_in ? c.dy.data_ptr() : nullptr, c.out.data_ptr(), c.x.numel(), dtype};
  return c;
}

}  // namespace gpt3d
