// Torch-free CPU entry points of the cross-entropy kernels (OpenMP over rows).
#pragma once
#include <cstdint>

#include "cross_entropy/cross_entropy_args.h"

namespace gpt3d {

void logsumexp_rows_cpu(const LogSumExpArgs& a);
void cross_entropy_backward_cpu(const CrossEntropyBackwardArgs& a);

// Per-instruction-set kernels over rows [begin, end).
namespace cpu_portable {
void logsumexp_rows(const LogSumExpArgs& a, int64_t begin, int64_t end);
void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end);
}  // namespace cpu_portable
namespace cpu_avx512 {
void logsumexp_rows(const LogSumExpArgs& a, int64_t begin, int64_t end);
void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end);
}  // namespace cpu_avx512
namespace cpu_avx2 {
void logsumexp_rows(const LogSumExpArgs& a, int64_t begin, int64_t end);
void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end);
}  // namespace cpu_avx2

}  // namespace gpt3d
