// GELU CPU entry points: OpenMP over blocks of elements (torch's OpenMP runtime), span kernel chosen by the CPU's
// instruction set.
#include "gelu/gelu_cpu.h"

#include <algorithm>

#include "common/cpu_features.h"

namespace gpt3d {
namespace {

constexpr int64_t kBlock = 16384;  // elements per task: 64 KB of fp32, enough to amortise a task

template <class Span>
void run_blocks(Span span, const GeluArgs& a) {
  const int64_t tasks = (a.n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) span(a, t * kBlock, std::min(a.n, (t + 1) * kBlock));
}

}  // namespace

void gelu_forward_cpu(const GeluArgs& a) {
  run_blocks(pick_for_isa(cpu_avx512::gelu_forward_span, cpu_avx2::gelu_forward_span, cpu_portable::gelu_forward_span),
             a);
}

void gelu_backward_cpu(const GeluArgs& a) {
  run_blocks(
      pick_for_isa(cpu_avx512::gelu_backward_span, cpu_avx2::gelu_backward_span, cpu_portable::gelu_backward_span), a);
}

}  // namespace gpt3d
