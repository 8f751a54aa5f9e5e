// Torch-free CUDA launchers of the GELU kernels (defined in gelu_cuda.cu, called by gelu_cuda_binding.cpp).
// Each returns the cudaError_t of the launch (0 = success); `stream` is a cudaStream_t.
#pragma once

#include "gelu/gelu_args.h"

extern "C" {
int gpt3d_gelu_forward_cuda(const gpt3d::GeluArgs* args, void* stream);
int gpt3d_gelu_backward_cuda(const gpt3d::GeluArgs* args, void* stream);
}
