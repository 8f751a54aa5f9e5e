// Torch-free element types understood by the kernels' C entry points (the bindings map torch dtypes onto these).
#pragma once

namespace gpt3d {

// kFloat16 reaches only the CUDA kernels: the bindings refuse float16 on the CPU (torch_checks.h, kernel_dtype).
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace gpt3d
