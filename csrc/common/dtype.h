// Torch-free element types understood by the kernels' C entry points (the bindings map torch dtypes onto these).
#pragma once

namespace gpt3d {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1 };

}  // namespace gpt3d
