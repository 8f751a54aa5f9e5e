// Torch-free CPU entry points of the scaled masked softmax over rows of sk keys (OpenMP over rows).
#pragma once
#include <cstdint>

#include "common/cpu_isa_decls.h"
#include "softmax/softmax_args.h"

namespace gpt3d {

void softmax_forward_cpu(const SoftmaxForwardArgs& a);
void softmax_backward_cpu(const SoftmaxBackwardArgs& a);

// Per-instruction-set row kernels; `scratch` holds sk floats private to the caller's thread.
GPT3D_DECLARE_FOR_EACH_CPU_ISA(
    void softmax_forward_rows(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch);
    void softmax_backward_rows(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end);)

}  // namespace gpt3d
