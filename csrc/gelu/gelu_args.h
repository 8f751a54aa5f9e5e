// Torch-free arguments of the GELU kernels (CPU entry points and CUDA launchers): n contiguous elements.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace gpt3d {

struct GeluArgs {
  const void* x;   // the forward's input
  const void* dy;  // backward only: the output's gradient (same dtype and size as x); null in the forward
  void* out;       // forward: gelu(x); backward: dx
  int64_t n;
  DType dtype;
};

}  // namespace gpt3d
