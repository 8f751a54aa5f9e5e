// Torch-free arguments of the softmax kernels (CPU entry points and CUDA launchers).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace gpt3d {

struct SoftmaxForwardArgs {
  const void* x;  // [batch, heads, sq, sk] contiguous, dtype
  void* y;        // same shape and dtype
  const bool* mask;  // optional, True = masked out; row (b, h, q) starts at b*mask_stride_b + h*mask_stride_h + q*mask_stride_q
  int64_t mask_stride_b, mask_stride_h, mask_stride_q;  // elements; 0 where the mask broadcasts
  int64_t batch, heads, sq, sk;
  bool causal;  // implicit causal mask (no mask tensor read)
  float scale;
  DType dtype;
};

struct SoftmaxBackwardArgs {
  const void* dy;  // [rows = batch * heads * sq, sk] contiguous, dtype
  const void* y;   // the forward output
  void* dx;
  int64_t rows, sq, sk;
  bool causal;  // skip the keys the causal mask hides (their y is 0)
  float scale;
  DType dtype;
};

}  // namespace gpt3d
