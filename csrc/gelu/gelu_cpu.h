// Torch-free CPU entry points of the tanh-approximation GELU (OpenMP over blocks of elements).
#pragma once
#include <cstdint>

#include "common/cpu_isa_decls.h"
#include "gelu/gelu_args.h"

namespace gpt3d {

void gelu_forward_cpu(const GeluArgs& a);
void gelu_backward_cpu(const GeluArgs& a);

// Per-instruction-set kernels over elements [begin, end).
GPT3D_DECLARE_FOR_EACH_CPU_ISA(
    void gelu_forward_span(const GeluArgs& a, int64_t begin, int64_t end);
    void gelu_backward_span(const GeluArgs& a, int64_t begin, int64_t end);)

}  // namespace gpt3d
