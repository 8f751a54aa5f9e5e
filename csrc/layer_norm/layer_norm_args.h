// Torch-free arguments of the LayerNorm kernels (CPU entry points and CUDA launchers): rows of `cols` contiguous
// elements, fp32 statistics.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace gpt3d {

struct LayerNormForwardArgs {
  const void* x;         // [rows, cols], x_dtype
  const void* residual;  // optional [rows, cols], x_dtype: normalise x + residual
  const void* gamma;     // [cols], w_dtype
  const void* beta;      // [cols], w_dtype
  void* y;               // [rows, cols], x_dtype
  void* sum;             // [rows, cols], x_dtype: x + residual (required iff residual)
  float* mean;           // [rows]
  float* rstd;           // [rows]
  int64_t rows, cols;
  float eps;
  DType x_dtype, w_dtype;
};

struct LayerNormBackwardArgs {
  const void* dy;     // [rows, cols], x_dtype
  const void* dextra; // optional [rows, cols], x_dtype: added to dx (gradient of the residual sum)
  const void* x;      // [rows, cols], x_dtype: the normalised input (x + residual for the fused add)
  const float* mean;  // [rows]
  const float* rstd;  // [rows]
  const void* gamma;  // [cols], w_dtype
  void* dx;           // [rows, cols], x_dtype
  void* dgamma;       // [cols], w_dtype
  void* dbeta;        // [cols], w_dtype
  int64_t rows, cols;
  DType x_dtype, w_dtype;
};

}  // namespace gpt3d
