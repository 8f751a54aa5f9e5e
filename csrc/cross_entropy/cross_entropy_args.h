// Torch-free arguments of the cross-entropy kernels (CPU entry points and CUDA launchers): logits [rows, cols],
// contiguous, of which the first real_cols columns are the vocabulary (the rest is padding).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace gpt3d {

struct LogSumExpArgs {
  const void* logits;
  float* lse;         // [rows]: log sum_j exp(logits[r, j]) over j < real_cols (-inf when real_cols is 0)
  int64_t rows, cols, real_cols;
  DType dtype;
};

struct CrossEntropyBackwardArgs {
  void* logits;          // in: the logits; out: their gradient, scale * (softmax - one-hot), 0 in padded columns
  const float* lse;      // [rows], from the forward
  const int64_t* labels; // [rows]: the one-hot's column; a label outside [0, real_cols) subtracts nothing (a label
                         // that another vocabulary shard holds)
  const float* scale;    // one value (the loss's gradient over the token count), read by the kernel: no host sync
  int64_t rows, cols, real_cols;
  DType dtype;
};

}  // namespace gpt3d
