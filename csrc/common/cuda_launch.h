// The CUDA bindings' check of a torch-free launcher's return code (a cudaError_t as int, 0 = success): one error
// naming the op. Include only in a CUDA build (the *_cuda_binding.cpp files, under GPT3D_WITH_CUDA).
#pragma once
#include <cuda_runtime_api.h>
#include <torch/extension.h>

namespace gpt3d {

inline void check_launch(const char* op, int err) {
  TORCH_CHECK(err == 0, op, ": CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace gpt3d
