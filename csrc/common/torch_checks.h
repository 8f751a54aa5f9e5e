// Input checks shared by the bindings: every failure names the op, the argument, what was expected and the fix.
#pragma once
#include <torch/extension.h>

#include <string>

#include "common/dtype.h"

namespace gpt3d {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

inline DType kernel_dtype(const char* op, const char* name, const at::Tensor& t) {
  if (t.scalar_type() == at::kHalf && t.is_cuda()) return DType::kFloat16;  // the CUDA kernels also take float16
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ", name, " has dtype ",
              t.scalar_type(), " but the fused kernel takes float32 or bfloat16 (and float16 on CUDA); cast it, or "
              "call the gpt3d.kernels function (it runs the PyTorch reference for other dtypes)");
  return t.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
                              const char* like_name) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ", like_name, " is on ",
              like.device(), "; move them to the same device");
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
                             const char* like_name) {
  TORCH_CHECK(t.sizes() == like.sizes(), op, ": ", name, " has shape ", shape_str(t), " but ", like_name,
              " has shape ", shape_str(like), "; they must match");
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
                             const char* like_name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              like_name, " has dtype ", like.scalar_type(), "; cast one of them");
}

// The kernel registered for `device` was reached with a tensor elsewhere (e.g. mixed devices); say which build has what.
inline void check_kernel_device(const char* op, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": got a tensor on ", t.device(), " but this is the ",
              c10::DeviceTypeName(device), " kernel; keep every argument on one device");
}

}  // namespace gpt3d
