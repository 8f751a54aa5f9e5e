// Torch-free CUDA launchers of the LayerNorm kernels (defined in layer_norm_cuda.cu, called by
// layer_norm_cuda_binding.cpp). Each returns the cudaError_t of the launch (0 = success); `stream` is a cudaStream_t.
#pragma once

#include "layer_norm/layer_norm_args.h"

extern "C" {
int gpt3d_layer_norm_forward_cuda(const gpt3d::LayerNormForwardArgs* args, void* stream);
// fp32 scratch the backward needs for per-chunk dgamma/dbeta partial sums.
long long gpt3d_layer_norm_backward_workspace_floats(long long rows, long long cols);
int gpt3d_layer_norm_backward_cuda(const gpt3d::LayerNormBackwardArgs* args, float* workspace, void* stream);
}
