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

// Normalises one fp32 row with fp32 weights, writing y as T (bf16 rows: ln_forward_row_bf16).
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

// bf16 rows are read two vectors at a time in every pass, widened without a shuffle (V::load_bf16_pairs: the elements
// at even positions in one vector, those at odd positions in the other); the weights are read in the same order. The
// order does not matter to the statistics, and each output element lands back in its place (store_bf16_pairs). The
// forward used to widen each row into an fp32 buffer once and run its passes over that: a 512-bit store and a
// narrowing load per 16 elements, and on AMD EPYC (about one 512-bit load a cycle, one store per ~1.7) loads and
// stores bound the kernel. 8192 rows x 768-2048 columns, 2 threads, alternated in one process: 1.4-1.7x faster.

// A weight's 2 * kWidth values at j in the order of V::load_bf16_pairs: bf16 weights as they are (a 32-bit lane
// holds a pair), fp32 weights from pair_ordered_weights.
template <class V>
inline void load_weight_pairs(const uint16_t* w, int64_t j, V& even, V& odd) { V::load_bf16_pairs(w + j, even, odd); }
template <class V>
inline void load_weight_pairs(const float* w, int64_t j, V& even, V& odd) {
  even = V::load(w + j);
  odd = V::load(w + j + V::kWidth);
}

template <class V, class W>
void ln_forward_row_bf16(const uint16_t* x, const W* gamma, const W* beta, uint16_t* y, int64_t cols,
                         float eps, float* mean_out, float* rstd_out) {
  constexpr int64_t P = 2 * V::kWidth;  // elements in one pair of vectors
  const int64_t whole = cols - cols % P, doubles = cols - cols % (2 * P);
  V acc0 = V::zero(), acc1 = V::zero(), acc2 = V::zero(), acc3 = V::zero(), e0, o0, e1, o1;
  int64_t j = 0;
  for (; j < doubles; j += 2 * P) {
    V::load_bf16_pairs(x + j, e0, o0);
    V::load_bf16_pairs(x + j + P, e1, o1);
    acc0 = acc0 + e0;
    acc1 = acc1 + o0;
    acc2 = acc2 + e1;
    acc3 = acc3 + o1;
  }
  for (; j < whole; j += P) {
    V::load_bf16_pairs(x + j, e0, o0);
    acc0 = acc0 + e0;
    acc1 = acc1 + o0;
  }
  for (; j < cols; j += V::kWidth) acc2 = acc2 + V::load(x + j, lanes<V>(cols, j));
  const float mean = ((acc0 + acc1) + (acc2 + acc3)).sum() / static_cast<float>(cols);

  const V vmean = V::set1(mean);
  acc0 = acc1 = acc2 = acc3 = V::zero();
  for (j = 0; j < doubles; j += 2 * P) {
    V::load_bf16_pairs(x + j, e0, o0);
    V::load_bf16_pairs(x + j + P, e1, o1);
    e0 = e0 - vmean, o0 = o0 - vmean, e1 = e1 - vmean, o1 = o1 - vmean;
    acc0 = fmadd(e0, e0, acc0);
    acc1 = fmadd(o0, o0, acc1);
    acc2 = fmadd(e1, e1, acc2);
    acc3 = fmadd(o1, o1, acc3);
  }
  for (; j < whole; j += P) {
    V::load_bf16_pairs(x + j, e0, o0);
    e0 = e0 - vmean, o0 = o0 - vmean;
    acc0 = fmadd(e0, e0, acc0);
    acc1 = fmadd(o0, o0, acc1);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V d = V::select(V::first(n), V::load(x + j, n) - vmean, V::zero());
    acc2 = fmadd(d, d, acc2);
  }
  const float rstd = ln_rstd(((acc0 + acc1) + (acc2 + acc3)).sum(), cols, eps);

  const V vrstd = V::set1(rstd);
  V ge, go, be, bo;
  // x * rstd - mean * rstd in one FMA rather than (x - mean) * rstd in two: its error (mean * rstd rounded once,
  // relative 2^-24) is far below the bf16 output's rounding (2^-9).
  const V neg_mean_rstd = V::set1(-mean * rstd);
  for (j = 0; j < whole; j += P) {
    V::load_bf16_pairs(x + j, e0, o0);
    load_weight_pairs(gamma, j, ge, go);
    load_weight_pairs(beta, j, be, bo);
    V::store_bf16_pairs(y + j, ln_affine(fmadd(e0, vrstd, neg_mean_rstd), ge, be),
                        ln_affine(fmadd(o0, vrstd, neg_mean_rstd), go, bo));
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V xhat = fmadd(V::load(x + j, n), vrstd, neg_mean_rstd);
    ln_affine(xhat, V::load(gamma + j, n), V::load(beta + j, n)).store(y + j, n);
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// sum = x + residual rounded to bf16, two vectors at a time as ln_forward_row_bf16 reads rows.
template <class V>
void add_row_bf16(const uint16_t* x, const uint16_t* residual, uint16_t* sum, int64_t cols) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  V xe, xo, re, ro;
  for (int64_t j = 0; j < whole; j += P) {
    V::load_bf16_pairs(x + j, xe, xo);
    V::load_bf16_pairs(residual + j, re, ro);
    V::store_bf16_pairs(sum + j, xe + re, xo + ro);
  }
  add_row<V>(x + whole, residual + whole, sum + whole, cols - whole);
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

// The bf16 backward, read as the forward reads (ln_forward_row_bf16): dy, x and dextra two vectors at a time, gamma in
// the same order, and dgamma_acc / dbeta_acc in that order too (pair order for the whole pairs, the tail in place).
template <class V, class W>
void ln_backward_row_bf16(const uint16_t* dy, const uint16_t* dextra, const uint16_t* x, float mean, float rstd,
                          const W* gamma, uint16_t* dx, int64_t cols, float* dgamma_acc, float* dbeta_acc) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  const V vrstd = V::set1(rstd), neg_mean_rstd = V::set1(-mean * rstd);
  V sum_g0 = V::zero(), sum_g1 = V::zero(), sum_gx0 = V::zero(), sum_gx1 = V::zero();
  V de, dod, xe, xo, ge, go;
  int64_t j = 0;
  for (; j < whole; j += P) {
    V::load_bf16_pairs(dy + j, de, dod);
    V::load_bf16_pairs(x + j, xe, xo);
    load_weight_pairs(gamma, j, ge, go);
    const V xhe = fmadd(xe, vrstd, neg_mean_rstd), xho = fmadd(xo, vrstd, neg_mean_rstd);
    const V gev = de * ge, gov = dod * go;
    sum_g0 = sum_g0 + gev;
    sum_g1 = sum_g1 + gov;
    sum_gx0 = fmadd(gev, xhe, sum_gx0);
    sum_gx1 = fmadd(gov, xho, sum_gx1);
    float* dg = dgamma_acc + j;
    float* db = dbeta_acc + j;
    fmadd(de, xhe, V::load(dg)).store(dg);
    fmadd(dod, xho, V::load(dg + V::kWidth)).store(dg + V::kWidth);
    (V::load(db) + de).store(db);
    (V::load(db + V::kWidth) + dod).store(db + V::kWidth);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V vdy = V::load(dy + j, n);
    const V xhat = fmadd(V::load(x + j, n), vrstd, neg_mean_rstd);
    const V g = vdy * V::load(gamma + j, n);
    sum_g0 = sum_g0 + g;
    sum_gx0 = fmadd(g, xhat, sum_gx0);  // masked lanes: dy loads as 0, so g is 0
    fmadd(vdy, xhat, V::load(dgamma_acc + j, n)).store(dgamma_acc + j, n);
    (V::load(dbeta_acc + j, n) + vdy).store(dbeta_acc + j, n);
  }
  const float inv_cols = 1.f / static_cast<float>(cols);
  const V mean_g = V::set1((sum_g0 + sum_g1).sum() * inv_cols);
  const V mean_g_xhat = V::set1((sum_gx0 + sum_gx1).sum() * inv_cols);
  V ee, eo;
  for (j = 0; j < whole; j += P) {
    V::load_bf16_pairs(dy + j, de, dod);
    V::load_bf16_pairs(x + j, xe, xo);
    load_weight_pairs(gamma, j, ge, go);
    V dxe = ln_input_grad(de * ge, fmadd(xe, vrstd, neg_mean_rstd), vrstd, mean_g, mean_g_xhat);
    V dxo = ln_input_grad(dod * go, fmadd(xo, vrstd, neg_mean_rstd), vrstd, mean_g, mean_g_xhat);
    if (dextra != nullptr) {
      V::load_bf16_pairs(dextra + j, ee, eo);
      dxe = dxe + ee;
      dxo = dxo + eo;
    }
    V::store_bf16_pairs(dx + j, dxe, dxo);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V xhat = fmadd(V::load(x + j, n), vrstd, neg_mean_rstd);
    V d = ln_input_grad(V::load(dy + j, n) * V::load(gamma + j, n), xhat, vrstd, mean_g, mean_g_xhat);
    if (dextra != nullptr) d = d + V::load(dextra + j, n);
    d.store(dx + j, n);
  }
}

// Adds pair-ordered column sums (ln_backward_row_bf16's accumulators) into natural-order ones.
template <class V>
void add_pair_ordered(const float* pairs, float* out, int64_t cols) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  for (int64_t j = 0; j < whole; j += P) {
    for (int64_t i = 0; i < V::kWidth; ++i) {
      out[j + 2 * i] += pairs[j + i];
      out[j + 2 * i + 1] += pairs[j + V::kWidth + i];
    }
  }
  for (int64_t j = whole; j < cols; ++j) out[j] += pairs[j];
}

// The backward widens bf16 rows (dy, x) and bf16 weights to fp32 once into row-sized buffers that stay in L1/L2, and
// every pass reads those: widening each in every pass with the one-vector load (a shuffle per vector) made it bound
// by conversions. Widening is exact, so the results are the same bits.
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

// fp32 weights for ln_forward_row_bf16: each whole pair of vectors (2 * kWidth elements) as its even-position then
// its odd-position elements, the tail in order.
template <class V, class W>
const float* pair_ordered_weights(const void* w, int64_t cols, std::vector<float>& buffer) {
  const W* src = static_cast<const W*>(w);
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  buffer.resize(cols);
  for (int64_t j = 0; j < whole; j += P) {
    for (int64_t i = 0; i < V::kWidth; ++i) {
      buffer[j + i] = load_as_float(src, j + 2 * i);
      buffer[j + V::kWidth + i] = load_as_float(src, j + 2 * i + 1);
    }
  }
  for (int64_t j = whole; j < cols; ++j) buffer[j] = load_as_float(src, j);
  return buffer.data();
}

// Software prefetch of the row a few KiB ahead (common/prefetch.h), where a row is read from memory once (a plain
// LayerNorm's mean pass, the bf16 backward's widening) and then worked on in cache: the hardware prefetchers follow
// demand misses, so during the in-cache passes nothing fetched the next row. Measured per-call (8192 rows, AMD EPYC,
// 1-2 threads, alternated in one process): LayerNorm forward 5-20% faster, bf16 backward 0-30%; fp32 backward (which
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
  std::vector<float> gamma_buf, beta_buf;
  constexpr bool kBf16 = !std::is_same<T, float>::value;
  // bf16 rows: bf16 weights are read as they are (already in pair order), fp32 weights from a reordered copy.
  const W* gamma = static_cast<const W*>(a.gamma);
  const W* beta = static_cast<const W*>(a.beta);
  if constexpr (kBf16 && std::is_same<W, float>::value) {
    gamma = pair_ordered_weights<V, W>(a.gamma, c, gamma_buf);
    beta = pair_ordered_weights<V, W>(a.beta, c, beta_buf);
  }
  for (int64_t r = begin; r < end; ++r) {
    if (res == nullptr) prefetch_row(x, r, c, a.rows);
    const T* row = x + r * c;
    T* y = static_cast<T*>(a.y) + r * c;
    if (res != nullptr) {
      T* sum = static_cast<T*>(a.sum) + r * c;
      if constexpr (kBf16) add_row_bf16<V>(row, res + r * c, sum, c);
      else add_row<V>(row, res + r * c, sum, c);
      row = sum;
    }
    if constexpr (kBf16) ln_forward_row_bf16<V>(row, gamma, beta, y, c, a.eps, a.mean + r, a.rstd + r);
    else ln_forward_row<V>(row, gamma, beta, y, c, a.eps, a.mean + r, a.rstd + r);  // T = W = float
  }
}

template <class V, class T, class W>
void ln_backward_rows_typed(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                            float* dbeta_acc) {
  const int64_t c = a.cols;
  const T* dextra = static_cast<const T*>(a.dextra);
  std::vector<float> gamma_buf;
  if constexpr (std::is_same<T, float>::value) {
    const float* gamma = weights_as_float<V, W>(a.gamma, c, gamma_buf);
    for (int64_t r = begin; r < end; ++r) {
      const float* dy = static_cast<const float*>(a.dy) + r * c;
      const float* x = static_cast<const float*>(a.x) + r * c;
      ln_backward_row<V>(dy, dextra ? dextra + r * c : nullptr, x, a.mean[r], a.rstd[r], gamma,
                         static_cast<float*>(a.dx) + r * c, c, dgamma_acc, dbeta_acc);
    }
  } else {
    const W* gamma = static_cast<const W*>(a.gamma);
    if constexpr (std::is_same<W, float>::value) gamma = pair_ordered_weights<V, W>(a.gamma, c, gamma_buf);
    std::vector<float> dgamma_pairs(c, 0.f), dbeta_pairs(c, 0.f);
    for (int64_t r = begin; r < end; ++r) {
      prefetch_row(static_cast<const T*>(a.dy), r, c, a.rows);
      prefetch_row(static_cast<const T*>(a.x), r, c, a.rows);
      ln_backward_row_bf16<V>(static_cast<const T*>(a.dy) + r * c, dextra ? dextra + r * c : nullptr,
                              static_cast<const T*>(a.x) + r * c, a.mean[r], a.rstd[r], gamma,
                              static_cast<T*>(a.dx) + r * c, c, dgamma_pairs.data(), dbeta_pairs.data());
    }
    add_pair_ordered<V>(dgamma_pairs.data(), dgamma_acc, c);
    add_pair_ordered<V>(dbeta_pairs.data(), dbeta_acc, c);
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
