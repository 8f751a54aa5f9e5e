// Cross-entropy row kernels written once over a vector type V (VecAvx512, VecAvx2 or VecPortable) and storage T
// (float or uint16_t bf16). Included through cross_entropy_cpu_instance.h by cross_entropy_cpu_{avx512,avx2,
// portable}.cpp.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/bf16.h"
#include "common/dtype.h"
#include "cross_entropy/cross_entropy_cpu.h"
#include "cross_entropy/cross_entropy_math.h"

namespace gpt3d {
namespace {

// log sum exp over x[0, n): pass 1 takes the max (and a plain sum, only to see a NaN: the vector max and exp drop
// NaN operands), pass 2 sums exp(x - max) from L1 (a 8192-wide fp32 row is 32 KB). As torch.logsumexp: -inf when
// every logit is -inf (or n is 0), +inf when one is +inf, NaN when one is NaN.
template <class V, class T>
float logsumexp_row(const T* x, int64_t n) {
  const float inf = __builtin_inff();
  const int64_t whole = n - n % V::kWidth;
  const int tail = static_cast<int>(n - whole);
  V max0 = V::set1(-inf), max1 = V::set1(-inf), nan_probe = V::zero();
  int64_t j = 0;
  for (; j + 2 * V::kWidth <= whole; j += 2 * V::kWidth) {  // two accumulators: max has a latency of 4 cycles
    const V a = V::load(x + j), b = V::load(x + j + V::kWidth);
    max0 = V::max(max0, a);
    max1 = V::max(max1, b);
    nan_probe = nan_probe + (a - a) + (b - b);  // 0, or NaN from a NaN or an infinity
  }
  for (; j < whole; j += V::kWidth) {
    const V a = V::load(x + j);
    max0 = V::max(max0, a);
    nan_probe = nan_probe + (a - a);
  }
  if (tail > 0) {
    const V a = V::select(V::first(tail), V::load(x + whole, tail), V::set1(-inf));
    max0 = V::max(max0, a);
    nan_probe = nan_probe + V::select(V::first(tail), a - a, V::zero());
  }
  const float row_max = V::max(max0, max1).hmax();
  if (!(nan_probe.sum() == 0.f)) {  // a NaN or an infinity: settle it with scalar code (never on a healthy row)
    bool has_nan = false;
    for (int64_t k = 0; k < n; ++k) has_nan = has_nan || std::isnan(load_as_float(x, k));
    if (has_nan) return std::nanf("");
  }
  if (!(row_max > -inf) || row_max == inf) return row_max;
  const V vmax = V::set1(row_max);
  V sum0 = V::zero(), sum1 = V::zero();
  for (j = 0; j + 2 * V::kWidth <= whole; j += 2 * V::kWidth) {
    sum0 = sum0 + V::exp(V::load(x + j) - vmax);
    sum1 = sum1 + V::exp(V::load(x + j + V::kWidth) - vmax);
  }
  for (; j < whole; j += V::kWidth) sum0 = sum0 + V::exp(V::load(x + j) - vmax);
  if (tail > 0) sum0 = sum0 + V::select(V::first(tail), V::exp(V::load(x + whole, tail) - vmax), V::zero());
  return row_max + std::log((sum0 + sum1).sum());
}

// x[0, cols) <- scale * (exp(x - lse) - one-hot at `label`) over the first real_cols columns, 0 beyond.
template <class V, class T>
void cross_entropy_grad_row(T* x, int64_t cols, int64_t real_cols, float lse, int64_t label, float scale) {
  const bool at_label = label_in_range(label, real_cols);
  const float x_label = at_label ? load_as_float(x, label) : 0.f;
  const V vlse = V::set1(lse), vscale = V::set1(scale);
  const int64_t whole = real_cols - real_cols % V::kWidth;
  const int tail = static_cast<int>(real_cols - whole);
  for (int64_t j = 0; j < whole; j += V::kWidth) (V::exp(V::load(x + j) - vlse) * vscale).store(x + j);
  if (tail > 0) (V::exp(V::load(x + whole, tail) - vlse) * vscale).store(x + whole, tail);
  for (int64_t j = real_cols; j < cols; j += V::kWidth) {
    V::zero().store(x + j, cols - j >= V::kWidth ? V::kWidth : static_cast<int>(cols - j));
  }
  if (at_label) store_from_float(x, label, cross_entropy_grad(std::exp(x_label - lse), true, scale));
}

template <class V, class T>
void logsumexp_rows_typed(const LogSumExpArgs& a, int64_t begin, int64_t end) {
  const T* logits = static_cast<const T*>(a.logits);
  for (int64_t r = begin; r < end; ++r) a.lse[r] = logsumexp_row<V>(logits + r * a.cols, a.real_cols);
}

template <class V, class T>
void cross_entropy_backward_rows_typed(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end) {
  T* logits = static_cast<T*>(a.logits);
  const float scale = *a.scale;
  for (int64_t r = begin; r < end; ++r) {
    cross_entropy_grad_row<V>(logits + r * a.cols, a.cols, a.real_cols, a.lse[r], a.labels[r], scale);
  }
}

template <class V>
void logsumexp_rows_dispatch(const LogSumExpArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == DType::kFloat32) logsumexp_rows_typed<V, float>(a, begin, end);
  else logsumexp_rows_typed<V, uint16_t>(a, begin, end);
}

template <class V>
void cross_entropy_backward_rows_dispatch(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == DType::kFloat32) cross_entropy_backward_rows_typed<V, float>(a, begin, end);
  else cross_entropy_backward_rows_typed<V, uint16_t>(a, begin, end);
}

}  // namespace
}  // namespace gpt3d
