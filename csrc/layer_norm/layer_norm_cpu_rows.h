// LayerNorm row kernels written once over a vector type V (VecAvx512, VecAvx2 or VecPortable) and storage types
// T (input) and W (gamma/beta): float or uint16_t (bf16). Included through layer_norm_cpu_instance.h by
// layer_norm_cpu_{avx512,avx2,portable}.cpp, each of which defines the entry points of layer_norm_cpu.h in its own
// namespace.
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/bf16.h"
#include "common/dtype.h"
#include "common/prefetch.h"
#include "layer_norm/layer_norm_cpu.h"
#include "layer_norm/layer_norm_math.h"

namespace gpt3d {
namespace {

template <class V>
inline int lanes(int64_t cols, int64_t j) {
  return cols - j >= V::kWidth ? V::kWidth : static_cast<int>(cols - j);
}

// Widens `cols` values of T into fp32 (a plain copy when T is float).
template <class V, class T>
void widen_row(const T* src, float* dst, int64_t cols) {
  const int64_t whole = cols - cols % V::kWidth;
  for (int64_t j = 0; j < whole; j += V::kWidth) V::load(src + j).store(dst + j);
  const int tail = static_cast<int>(cols - whole);
  if (tail > 0) V::load(src + whole, tail).store(dst + whole, tail);
}

// sum = x + residual, rounded to T (the row then normalises the stored sum).
template <class V, class T>
void add_row(const T* x, const T* residual, T* sum, int64_t cols) {
  const int64_t whole = cols - cols % V::kWidth;
  const int tail = static_cast<int>(cols - whole);
  for (int64_t j = 0; j < whole; j += V::kWidth) (V::load(x + j) + V::load(residual + j)).store(sum + j);
  if (tail > 0) (V::load(x + whole, tail) + V::load(residual + whole, tail)).store(sum + whole, tail);
}

// Normalises one fp32 row (the input, or its widening) with fp32 weights, writing y as T.
template <class V, class T>
void ln_forward_row(const float* x, const float* gamma, const float* beta, T* y, int64_t cols, float eps,
                    float* mean_out, float* rstd_out) {
  const int64_t whole = cols - cols % V::kWidth, quads = cols - cols % (4 * V::kWidth);
  const int tail = static_cast<int>(cols - whole);
  // Whole vectors first, four at a time into four accumulators (an add or FMA has a latency of 4 cycles and two
  // issue per cycle: two accumulators left the statistics passes latency-bound, 0.9x eager on AVX2); the rest and the
  // masked tail into the first.
  constexpr int64_t W4 = 4 * V::kWidth;
  V acc0 = V::zero(), acc1 = V::zero(), acc2 = V::zero(), acc3 = V::zero();
  int64_t j = 0;
  for (; j < quads; j += W4) {
    acc0 = acc0 + V::load(x + j);
    acc1 = acc1 + V::load(x + j + V::kWidth);
    acc2 = acc2 + V::load(x + j + 2 * V::kWidth);
    acc3 = acc3 + V::load(x + j + 3 * V::kWidth);
  }
  for (; j < cols; j += V::kWidth) acc0 = acc0 + V::load(x + j, lanes<V>(cols, j));
  const float mean = ((acc0 + acc1) + (acc2 + acc3)).sum() / static_cast<float>(cols);

  const V vmean = V::set1(mean);
  acc0 = acc1 = acc2 = acc3 = V::zero();
  for (j = 0; j < quads; j += W4) {
    const V d0 = V::load(x + j) - vmean, d1 = V::load(x + j + V::kWidth) - vmean;
    const V d2 = V::load(x + j + 2 * V::kWidth) - vmean, d3 = V::load(x + j + 3 * V::kWidth) - vmean;
    acc0 = fmadd(d0, d0, acc0);
    acc1 = fmadd(d1, d1, acc1);
    acc2 = fmadd(d2, d2, acc2);
    acc3 = fmadd(d3, d3, acc3);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V d = V::select(V::first(n), V::load(x + j, n) - vmean, V::zero());
    acc0 = fmadd(d, d, acc0);
  }
  const float rstd = ln_rstd(((acc0 + acc1) + (acc2 + acc3)).sum(), cols, eps);

  const V vrstd = V::set1(rstd);
  for (j = 0; j < whole; j += V::kWidth) {
    const V xhat = ln_normalize(V::load(x + j), vmean, vrstd);
    ln_affine(xhat, V::load(gamma + j), V::load(beta + j)).store(y + j);
  }
  if (tail > 0) {
    const V xhat = ln_normalize(V::load(x + whole, tail), vmean, vrstd);
    ln_affine(xhat, V::load(gamma + whole, tail), V::load(beta + whole, tail)).store(y + whole, tail);
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// dx for one row (dy, x and gamma in fp32: the input or its widening; dextra and dx as T); adds dy * xhat and dy into
// the caller's fp32 column accumulators for dgamma and dbeta.
template <class V, class T>
void ln_backward_row(const float* dy, const T* dextra, const float* x, float mean, float rstd, const float* gamma,
                     T* dx, int64_t cols, float* dgamma_acc, float* dbeta_acc) {
  const V vmean = V::set1(mean), vrstd = V::set1(rstd);
  V sum_g = V::zero(), sum_g_xhat = V::zero();
  for (int64_t j = 0; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V vdy = V::load(dy + j, n);
    const V xhat = ln_normalize(V::load(x + j, n), vmean, vrstd);
    const V g = vdy * V::load(gamma + j, n);
    sum_g = sum_g + g;
    sum_g_xhat = fmadd(g, xhat, sum_g_xhat);
    fmadd(vdy, xhat, V::load(dgamma_acc + j, n)).store(dgamma_acc + j, n);
    (V::load(dbeta_acc + j, n) + vdy).store(dbeta_acc + j, n);
  }
  const float inv_cols = 1.f / static_cast<float>(cols);
  const V mean_g = V::set1(sum_g.sum() * inv_cols), mean_g_xhat = V::set1(sum_g_xhat.sum() * inv_cols);
  for (int64_t j = 0; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V xhat = ln_normalize(V::load(x + j, n), vmean, vrstd);
    const V g = V::load(dy + j, n) * V::load(gamma + j, n);
    V d = ln_input_grad(g, xhat, vrstd, mean_g, mean_g_xhat);
    if (dextra != nullptr) d = d + V::load(dextra + j, n);
    d.store(dx + j, n);
  }
}

// fp32 rows are normalised in place of reading. bf16 rows (and bf16 weights) are widened to fp32 once into a
// row-sized buffer that stays in L1/L2, and every pass reads that: otherwise each pass widens again (three passes over
// x, two over the weights), which made bf16 LayerNorm bound by conversions (21% of copy bandwidth on the portable
// path, 49-84% elsewhere) rather than by memory. Widening is exact, so the results are the same bits.
template <class V, class W>
const float* weights_as_float(const void* w, int64_t cols, std::vector<float>& buffer) {
  if constexpr (std::is_same<W, float>::value) {
    return static_cast<const float*>(w);
  } else {
    buffer.resize(cols);
    widen_row<V>(static_cast<const W*>(w), buffer.data(), cols);
    return buffer.data();
  }
}

// Software prefetch of the row a few KiB ahead (common/prefetch.h), where a row is read from memory once (a plain
// LayerNorm's mean pass, a bf16 row's widening) and then worked on in cache: the hardware prefetchers follow demand
// misses, so during the in-cache passes nothing fetched the next row. Measured per-call (8192 rows, AMD EPYC, 1-2
// threads, alternated in one process): LayerNorm forward 5-20% faster, bf16 backward 0-30%; fp32 backward (which
// reads dy and x from memory in both passes) and add+LayerNorm (three streams) were 5-15% slower with it, so they
// do without.
template <class T>
__attribute__((always_inline)) inline void prefetch_row(const T* rows, int64_t r, int64_t cols, int64_t total_rows) {
  const int64_t row_bytes = cols * static_cast<int64_t>(sizeof(T)), ahead = r + prefetch_rows_ahead(row_bytes);
  if (ahead < total_rows) prefetch_for_read(rows + ahead * cols, row_bytes);
}

template <class V, class T, class W>
void ln_forward_rows_typed(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  const int64_t c = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  std::vector<float> gamma_buf, beta_buf, row_buf;
  const float* gamma = weights_as_float<V, W>(a.gamma, c, gamma_buf);
  const float* beta = weights_as_float<V, W>(a.beta, c, beta_buf);
  if (!std::is_same<T, float>::value) row_buf.resize(c);
  for (int64_t r = begin; r < end; ++r) {
    if (res == nullptr) prefetch_row(x, r, c, a.rows);
    const T* row = x + r * c;
    if (res != nullptr) {
      T* sum = static_cast<T*>(a.sum) + r * c;
      add_row<V>(row, res + r * c, sum, c);
      row = sum;
    }
    T* y = static_cast<T*>(a.y) + r * c;
    if constexpr (std::is_same<T, float>::value) {
      ln_forward_row<V>(row, gamma, beta, y, c, a.eps, a.mean + r, a.rstd + r);
    } else {
      widen_row<V>(row, row_buf.data(), c);
      ln_forward_row<V>(row_buf.data(), gamma, beta, y, c, a.eps, a.mean + r, a.rstd + r);
    }
  }
}

template <class V, class T, class W>
void ln_backward_rows_typed(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                            float* dbeta_acc) {
  const int64_t c = a.cols;
  const T* dextra = static_cast<const T*>(a.dextra);
  std::vector<float> gamma_buf, dy_buf, x_buf;
  const float* gamma = weights_as_float<V, W>(a.gamma, c, gamma_buf);
  if constexpr (!std::is_same<T, float>::value) {
    dy_buf.resize(c);
    x_buf.resize(c);
  }
  for (int64_t r = begin; r < end; ++r) {
    const T* dy = static_cast<const T*>(a.dy) + r * c;
    const T* x = static_cast<const T*>(a.x) + r * c;
    T* dx = static_cast<T*>(a.dx) + r * c;
    const T* extra = dextra ? dextra + r * c : nullptr;
    if constexpr (!std::is_same<T, float>::value) {
      prefetch_row(static_cast<const T*>(a.dy), r, c, a.rows);
      prefetch_row(static_cast<const T*>(a.x), r, c, a.rows);
      widen_row<V>(dy, dy_buf.data(), c);
      widen_row<V>(x, x_buf.data(), c);
      ln_backward_row<V>(dy_buf.data(), extra, x_buf.data(), a.mean[r], a.rstd[r], gamma, dx, c, dgamma_acc,
                         dbeta_acc);
    } else {
      ln_backward_row<V>(dy, extra, x, a.mean[r], a.rstd[r], gamma, dx, c, dgamma_acc, dbeta_acc);
    }
  }
}

// The (input, weight) dtype pairs with kernels: fp32/fp32, bf16/bf16, bf16/fp32 (the binding rejects the rest).
template <class V>
void ln_forward_rows_dispatch(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  if (a.x_dtype == DType::kFloat32) ln_forward_rows_typed<V, float, float>(a, begin, end);
  else if (a.w_dtype == DType::kBFloat16) ln_forward_rows_typed<V, uint16_t, uint16_t>(a, begin, end);
  else ln_forward_rows_typed<V, uint16_t, float>(a, begin, end);
}

template <class V>
void ln_backward_rows_dispatch(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dg, float* db) {
  if (a.x_dtype == DType::kFloat32) ln_backward_rows_typed<V, float, float>(a, begin, end, dg, db);
  else if (a.w_dtype == DType::kBFloat16) ln_backward_rows_typed<V, uint16_t, uint16_t>(a, begin, end, dg, db);
  else ln_backward_rows_typed<V, uint16_t, float>(a, begin, end, dg, db);
}

}  // namespace
}  // namespace gpt3d
