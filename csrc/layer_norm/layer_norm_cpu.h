// Torch-free CPU entry points of the LayerNorm kernels (rows of `cols` contiguous elements, OpenMP over rows).
#pragma once
#include <cstdint>

#include "common/cpu_isa_decls.h"
#include "layer_norm/layer_norm_args.h"

namespace gpt3d {

void layer_norm_forward_cpu(const LayerNormForwardArgs& a);
void layer_norm_backward_cpu(const LayerNormBackwardArgs& a);

// The per-instruction-set row kernels the entry points choose between at run time.
GPT3D_DECLARE_FOR_EACH_CPU_ISA(
    void layer_norm_forward_rows(const LayerNormForwardArgs& a, int64_t begin, int64_t end);
    void layer_norm_backward_rows(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                                  float* dbeta_acc);)

}  // namespace gpt3d
