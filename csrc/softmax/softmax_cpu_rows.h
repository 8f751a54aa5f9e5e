// Softmax row kernels written once over a vector type V (VecAvx512, VecAvx2 or VecPortable) and storage T (float
// or uint16_t bf16). Included through softmax_cpu_instance.h by softmax_cpu_{avx512,avx2,portable}.cpp.
#pragma once
#include <cstdint>

#include "common/bf16.h"
#include "common/dtype.h"
#include "common/prefetch.h"
#include "softmax/softmax_cpu.h"
#include "softmax/softmax_math.h"

namespace gpt3d {
namespace {

template <class V>
inline int softmax_lanes(int64_t limit, int64_t j) {
  return limit - j >= V::kWidth ? V::kWidth : static_cast<int>(limit - j);
}

template <class V, class T>
void store_zeros(T* y, int64_t from, int64_t to) {
  for (int64_t j = from; j < to; j += V::kWidth) V::zero().store(y + j, softmax_lanes<V>(to, j));
}

// Scaled, masked score of keys [j, j + n): -inf where the mask hides a key or past the first n lanes.
template <class V, class T>
inline V scaled_scores(const T* x, const bool* mask, int64_t j, int n, V vscale) {
  const V neg_inf = V::set1(-__builtin_inff());
  V v = V::load(x + j, n) * vscale;
  if (mask != nullptr) v = V::select(V::load_mask(mask + j, n), neg_inf, v);
  return n >= V::kWidth ? v : V::select(V::first(n), v, neg_inf);
}

// Keys [0, visible) are candidates (the causal limit, or sk); `mask` (may be null) hides more of them. Each pass runs
// whole vectors first and the row's tail (fewer than kWidth keys) once, so the main loops carry no lane masks.
template <class V, class T>
void softmax_forward_row(const T* x, const bool* mask, T* y, int64_t sk, int64_t visible, float scale, float* scratch) {
  const V vscale = V::set1(scale), zero = V::zero();
  const int64_t whole = visible - visible % V::kWidth;
  const int tail = static_cast<int>(visible - whole);
  V vmax = V::set1(-__builtin_inff());
  for (int64_t j = 0; j < whole; j += V::kWidth) {  // pass 1: scaled, masked scores into scratch; row max
    const V v = scaled_scores<V, T>(x, mask, j, V::kWidth, vscale);
    vmax = V::max(vmax, v);
    v.store(scratch + j);
  }
  if (tail > 0) {
    const V v = scaled_scores<V, T>(x, mask, whole, tail, vscale);
    vmax = V::max(vmax, v);
    v.store(scratch + whole, tail);
  }
  const float row_max = vmax.hmax();
  if (!(row_max > -__builtin_inff())) {  // every key masked: the row is all zeros
    store_zeros<V>(y, 0, sk);
    return;
  }
  const V vrow_max = V::set1(row_max);
  V vsum = zero;
  for (int64_t j = 0; j < whole; j += V::kWidth) {  // pass 2: exponentials (masked keys give exactly 0)
    const V e = V::exp(V::load(scratch + j) - vrow_max);
    vsum = vsum + e;
    e.store(scratch + j);
  }
  if (tail > 0) {
    const V e = V::select(V::first(tail), V::exp(V::load(scratch + whole, tail) - vrow_max), zero);
    vsum = vsum + e;
    e.store(scratch + whole, tail);
  }
  const V inv_sum = V::set1(1.f / vsum.sum());
  for (int64_t j = 0; j < whole; j += V::kWidth) (V::load(scratch + j) * inv_sum).store(y + j);  // pass 3: normalise
  if (tail > 0) (V::load(scratch + whole, tail) * inv_sum).store(y + whole, tail);
  store_zeros<V>(y, visible, sk);
}

template <class V, class T>
void softmax_backward_row(const T* dy, const T* y, T* dx, int64_t sk, int64_t visible, float scale) {
  V acc = V::zero();
  for (int64_t j = 0; j < visible; j += V::kWidth) {
    const int n = softmax_lanes<V>(visible, j);
    acc = acc + V::load(dy + j, n) * V::load(y + j, n);
  }
  const V dot = V::set1(acc.sum()), vscale = V::set1(scale);
  for (int64_t j = 0; j < visible; j += V::kWidth) {
    const int n = softmax_lanes<V>(visible, j);
    softmax_input_grad(V::load(dy + j, n), V::load(y + j, n), dot, vscale).store(dx + j, n);
  }
  store_zeros<V>(dx, visible, sk);
}

// Causal rows are read only up to their visible keys, which the hardware prefetchers do not follow: before row r,
// ask for the visible part of the row a few KiB ahead (common/prefetch.h), and at a task's first row for the rows up
// to there. Rows read whole stream well without it.
template <class T>
__attribute__((always_inline)) inline void prefetch_causal_rows(const T* data, int64_t r, int64_t begin, int64_t rows,
                                                                int64_t sq, int64_t sk) {
  const int64_t ahead = prefetch_rows_ahead(sk * static_cast<int64_t>(sizeof(T)));
  const int64_t first = r == begin ? r + 1 : r + ahead;
  for (int64_t p = first; p <= r + ahead && p < rows; ++p)
    prefetch_for_read(data + p * sk, causal_visible_keys(p % sq, sq, sk) * static_cast<int64_t>(sizeof(T)));
}

template <class V, class T>
void softmax_forward_rows_typed(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const int64_t rows = a.batch * a.heads * a.sq;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t q = r % a.sq, bh = r / a.sq;
    const bool* mask = a.mask == nullptr ? nullptr
                                         : a.mask + (bh / a.heads) * a.mask_stride_b +
                                               (bh % a.heads) * a.mask_stride_h + q * a.mask_stride_q;
    const int64_t visible = a.causal ? causal_visible_keys(q, a.sq, a.sk) : a.sk;
    if (a.causal) prefetch_causal_rows(x, r, begin, rows, a.sq, a.sk);
    softmax_forward_row<V, T>(x + r * a.sk, mask, y + r * a.sk, a.sk, visible, a.scale, scratch);
  }
}

template <class V, class T>
void softmax_backward_rows_typed(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t visible = a.causal ? causal_visible_keys(r % a.sq, a.sq, a.sk) : a.sk;
    if (a.causal) {
      prefetch_causal_rows(static_cast<const T*>(a.dy), r, begin, a.rows, a.sq, a.sk);
      prefetch_causal_rows(static_cast<const T*>(a.y), r, begin, a.rows, a.sq, a.sk);
    }
    softmax_backward_row<V, T>(static_cast<const T*>(a.dy) + r * a.sk, static_cast<const T*>(a.y) + r * a.sk,
                               static_cast<T*>(a.dx) + r * a.sk, a.sk, visible, a.scale);
  }
}

template <class V>
void softmax_forward_rows_dispatch(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  if (a.dtype == DType::kFloat32) softmax_forward_rows_typed<V, float>(a, begin, end, scratch);
  else softmax_forward_rows_typed<V, uint16_t>(a, begin, end, scratch);
}

template <class V>
void softmax_backward_rows_dispatch(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == DType::kFloat32) softmax_backward_rows_typed<V, float>(a, begin, end);
  else softmax_backward_rows_typed<V, uint16_t>(a, begin, end);
}

}  // namespace
}  // namespace gpt3d
