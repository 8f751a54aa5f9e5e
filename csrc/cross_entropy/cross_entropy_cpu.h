// Torch-free CPU entry points of the cross-entropy kernels (OpenMP over rows).
#pragma once
#include <cstdint>

#include "common/cpu_isa_decls.h"
#include "cross_entropy/cross_entropy_args.h"

namespace gpt3d {

void logsumexp_rows_cpu(const LogSumExpArgs& a);
void cross_entropy_backward_cpu(const CrossEntropyBackwardArgs& a);

// Per-instruction-set kernels over rows [begin, end).
GPT3D_DECLARE_FOR_EACH_CPU_ISA(
    void logsumexp_rows(const LogSumExpArgs& a, int64_t begin, int64_t end);
    void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end);)

}  // namespace gpt3d
