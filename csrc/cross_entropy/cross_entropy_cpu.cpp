// Cross-entropy CPU entry points: OpenMP over rows (torch's OpenMP runtime), row kernel chosen by the CPU's
// instruction set.
#include "cross_entropy/cross_entropy_cpu.h"

#include <algorithm>

#include "common/cpu_features.h"

namespace gpt3d {
namespace {

// Rows per task: a few of the vocabulary-wide rows, enough to amortise a task.
int64_t rows_per_task(int64_t cols) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)); }

template <class Rows, class Args>
void run_rows(Rows rows_fn, const Args& a) {
  const int64_t step = rows_per_task(a.cols);
  const int64_t tasks = (a.rows + step - 1) / step;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) rows_fn(a, t * step, std::min(a.rows, (t + 1) * step));
}

}  // namespace

void logsumexp_rows_cpu(const LogSumExpArgs& a) {
  run_rows(pick_for_isa(cpu_avx512::logsumexp_rows, cpu_avx2::logsumexp_rows, cpu_portable::logsumexp_rows), a);
}

void cross_entropy_backward_cpu(const CrossEntropyBackwardArgs& a) {
  run_rows(pick_for_isa(cpu_avx512::cross_entropy_backward_rows, cpu_avx2::cross_entropy_backward_rows,
                        cpu_portable::cross_entropy_backward_rows),
           a);
}

}  // namespace gpt3d
