// LayerNorm CPU entry points: OpenMP over rows (torch's own OpenMP runtime, so torch.set_num_threads applies), with the
// row kernel chosen once per call by the CPU's instruction set.
#include "layer_norm/layer_norm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/bf16.h"
#include "common/cpu_features.h"

namespace gpt3d {
namespace {

// Rows per OpenMP task: enough work to amortise scheduling, small enough to balance.
int64_t rows_per_task(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

}  // namespace

void layer_norm_forward_cpu(const LayerNormForwardArgs& a) {
  auto rows_fn = pick_for_isa(cpu_avx512::layer_norm_forward_rows, cpu_avx2::layer_norm_forward_rows,
                              cpu_portable::layer_norm_forward_rows);
  // Every row costs the same, so each thread takes one contiguous block of rows in one call: the call sets up once
  // (fp32 weights of bf16 rows copied into the rows' pair order). Per task of 16k elements (8 rows of 2048) the
  // set-up of the time (bf16 weights widened, a row buffer allocated) was a quarter of the work: avx2 bf16 8192 x
  // 2048 ran at 0.78x torch eager.
  const int64_t step = rows_per_task(a.cols);
  const int threads = static_cast<int>(std::clamp<int64_t>((a.rows + step - 1) / step, 1, omp_get_max_threads()));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int64_t n = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = a.rows * t / n, end = a.rows * (t + 1) / n;
    if (begin < end) rows_fn(a, begin, end);
  }
}

void layer_norm_backward_cpu(const LayerNormBackwardArgs& a) {
  auto rows_fn = pick_for_isa(cpu_avx512::layer_norm_backward_rows, cpu_avx2::layer_norm_backward_rows,
                              cpu_portable::layer_norm_backward_rows);
  // dgamma/dbeta: each chunk of rows accumulates its own fp32 column sums, added in chunk order afterwards. The chunk
  // count does not depend on the thread count (up to 32 threads), so results are reproducible across thread counts.
  // At least 64 rows a chunk: with 32 chunks of 8 rows (256 rows) zeroing and summing the partials cost more than the
  // rows, and the backward fell to 0.8-0.97x torch eager.
  constexpr int64_t kMinRowsPerChunk = 64;
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(a.rows / kMinRowsPerChunk, std::max(32, omp_get_max_threads())));
  std::vector<float> partial(static_cast<size_t>(chunks) * 2 * a.cols, 0.f);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t begin = a.rows * k / chunks, end = a.rows * (k + 1) / chunks;
    float* dg = partial.data() + k * 2 * a.cols;
    rows_fn(a, begin, end, dg, dg + a.cols);
  }
  // Column sums over the chunks, chunk after chunk (contiguous rows of the partials: the compiler vectorises it).
  float* dg = partial.data();  // chunk 0's sums become the totals
  float* db = partial.data() + a.cols;
  for (int64_t k = 1; k < chunks; ++k) {
    const float* pg = partial.data() + k * 2 * a.cols;
    const float* pb = pg + a.cols;
    for (int64_t j = 0; j < a.cols; ++j) dg[j] += pg[j];
    for (int64_t j = 0; j < a.cols; ++j) db[j] += pb[j];
  }
  if (a.w_dtype == DType::kFloat32) {
    std::copy(dg, dg + a.cols, static_cast<float*>(a.dgamma));
    std::copy(db, db + a.cols, static_cast<float*>(a.dbeta));
  } else {
    for (int64_t j = 0; j < a.cols; ++j) {
      static_cast<uint16_t*>(a.dgamma)[j] = float_to_bf16(dg[j]);
      static_cast<uint16_t*>(a.dbeta)[j] = float_to_bf16(db[j]);
    }
  }
}

}  // namespace gpt3d
