// Torch-free CPU entry points of the blocked causal attention (fp32; OpenMP over heads, BLAS GEMMs per block).
#pragma once
#include <cstdint>

#include "common/cpu_isa_decls.h"
#include "attention/block_attention_args.h"

namespace gpt3d {

void block_attention_forward_cpu(const BlockAttentionForwardArgs& a);
void block_attention_backward_cpu(const BlockAttentionBackwardArgs& a);

// Per-instruction-set kernels over heads [begin, end) of batch x heads; `scratch` holds s floats, `dp` block x s,
// private to the caller's thread.
GPT3D_DECLARE_FOR_EACH_CPU_ISA(
    void block_attention_forward_heads(const BlockAttentionForwardArgs& a, int64_t begin, int64_t end, float* scratch);
    void block_attention_backward_heads(const BlockAttentionBackwardArgs& a, int64_t begin, int64_t end, float* dp);)

}  // namespace gpt3d
