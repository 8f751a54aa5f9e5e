// Torch-free CUDA launchers of the cross-entropy kernels (defined in cross_entropy_cuda.cu, called by
// cross_entropy_cuda_binding.cpp). Each returns the cudaError_t of the launch (0 = success); `stream` is a
// cudaStream_t.
#pragma once

#include "cross_entropy/cross_entropy_args.h"

extern "C" {
int gpt3d_logsumexp_rows_cuda(const gpt3d::LogSumExpArgs* args, void* stream);
int gpt3d_cross_entropy_backward_cuda(const gpt3d::CrossEntropyBackwardArgs* args, void* stream);
}
