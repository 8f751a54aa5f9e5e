// Torch-free CUDA launchers of the softmax kernels (defined in softmax_cuda.cu, called by softmax_cuda_binding.cpp).
// Each returns the cudaError_t of the launch (0 = success); `stream` is a cudaStream_t.
#pragma once

#include "softmax/softmax_args.h"

extern "C" {
int gpt3d_softmax_forward_cuda(const gpt3d::SoftmaxForwardArgs* args, void* stream);
int gpt3d_softmax_backward_cuda(const gpt3d::SoftmaxBackwardArgs* args, void* stream);
}
