// Softmax CPU entry points: OpenMP over rows (torch's OpenMP runtime), row kernel chosen by the CPU's instruction set.
#include "softmax/softmax_cpu.h"

#include <algorithm>
#include <memory>

#include "common/cpu_features.h"

namespace gpt3d {
namespace {

int64_t rows_per_task(int64_t sk) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(sk, 1)); }

}  // namespace

void softmax_forward_cpu(const SoftmaxForwardArgs& a) {
  auto rows_fn = pick_for_isa(cpu_avx512::softmax_forward_rows, cpu_avx2::softmax_forward_rows,
                              cpu_portable::softmax_forward_rows);
  const int64_t rows = a.batch * a.heads * a.sq, step = rows_per_task(a.sk), tasks = (rows + step - 1) / step;
#pragma omp parallel if (tasks > 1)
  {
    // Each thread's scaled scores and exponentials stay in its own cache-resident row buffer.
    std::unique_ptr<float[]> scratch(new float[a.sk]);
#pragma omp for schedule(static, 1)  // round-robin: causal rows grow longer down the matrix
    for (int64_t t = 0; t < tasks; ++t) rows_fn(a, t * step, std::min(rows, (t + 1) * step), scratch.get());
  }
}

void softmax_backward_cpu(const SoftmaxBackwardArgs& a) {
  auto rows_fn = pick_for_isa(cpu_avx512::softmax_backward_rows, cpu_avx2::softmax_backward_rows,
                              cpu_portable::softmax_backward_rows);
  const int64_t step = rows_per_task(a.sk), tasks = (a.rows + step - 1) / step;
#pragma omp parallel for schedule(static, 1) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) rows_fn(a, t * step, std::min(a.rows, (t + 1) * step));
}

}  // namespace gpt3d
