// The storage type of a kernel DType on the GPU, for the CUDA launchers' dispatch (torch-free).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "common/dtype.h"

namespace gpt3d {
namespace {

// fn(T{}) with T the storage type of `dtype`: float, uint16_t (bf16 bits) or __half; returns fn's result.
template <class Fn>
int by_dtype(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::kBFloat16: return fn(uint16_t{});
    case DType::kFloat16: return fn(__half{});
    default: return fn(float{});
  }
}

}  // namespace
}  // namespace gpt3d
