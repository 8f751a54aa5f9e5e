// LayerNorm row kernels written once over a vector type V (VecAvx512, VecAvx2 or VecPortable) and storage types
// T (input) and W (gamma/beta): float or uint16_t (bf16). Included through layer_norm_cpu_instance.h by
// layer_norm_cpu_{avx512,avx2,portable}.cpp, each of which defines the entry points of layer_norm_cpu.h in its own
// namespace.
//
// Every pass reads a row two vectors (2 * kWidth elements) at a time. fp32 rows are two consecutive vectors; bf16 rows
// are widened without a shuffle (V::load_bf16_pairs: the elements at even positions in one vector, those at odd
// positions in the other), and everything read beside them (weights, column accumulators) is kept in that "pair
// order" too. The order does not matter to the statistics, and each output lands back in its place (store_pairs).
// bf16 rows used to be widened into an fp32 buffer once per row and the passes run over that: a 512-bit store and a
// narrowing load per 16 elements, and on AMD EPYC (about one 512-bit load a cycle and one store per ~1.7) loads and
// stores bound the kernels. 8192 rows x 768-2048 columns, 2 threads, alternated in one process, with the details
// below: bf16 forward 1.2-1.7x, backward 1.4-1.8x faster (avx512 and avx2).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/bf16.h"
#include "common/cpu_features.h"
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

// 2 * kWidth values at p in pair order, and back.
template <class V>
inline void load_pairs(const float* p, V& first, V& second) {
  first = V::load(p);
  second = V::load(p + V::kWidth);
}
template <class V>
inline void load_pairs(const uint16_t* p, V& even, V& odd) { V::load_bf16_pairs(p, even, odd); }
// kCheckNaN false (bf16 only) skips the rounding's NaN check: only where every NaN among the values has zero low 16
// bits (common/bf16_round.h), which holds when no operand is an fp32 NaN with a payload there: bf16 operands, finite
// fp32 ones, and the default NaN of an invalid operation all qualify. 2-5% of bf16 LayerNorm on avx512, 5-18% on avx2.
template <bool kCheckNaN = true, class V>
inline void store_pairs(float* p, V first, V second) {
  first.store(p);
  second.store(p + V::kWidth);
}
template <bool kCheckNaN = true, class V>
inline void store_pairs(uint16_t* p, V even, V odd) { V::template store_bf16_pairs<kCheckNaN>(p, even, odd); }

// Whether a weight leaves bf16 outputs free of NaNs with low bits (see store_pairs): bf16 weights always, fp32 weights
// when none is NaN. Checked once per call.
inline bool nan_free_low_bits(const uint16_t*, int64_t) { return true; }
inline bool nan_free_low_bits(const float* w, int64_t cols) {
  for (int64_t j = 0; j < cols; ++j)
    if (std::isnan(w[j])) return false;
  return true;
}

// A row's normalisation, xhat = (x - mean) * rstd. (x * rstd - mean * rstd, one FMA, was 3-5% faster on bf16 rows,
// but gives NaN where mean * rstd overflows while x - mean does not.)
template <class V>
struct RowNorm {
  V mean, rstd;
  RowNorm() = default;
  RowNorm(float m, float r) : mean(V::set1(m)), rstd(V::set1(r)) {}
  V xhat(V x) const { return ln_normalize(x, mean, rstd); }
};

// sum = x + residual, rounded to T (the row then normalises the stored sum).
template <class V, class T>
void add_row(const T* x, const T* residual, T* sum, int64_t cols) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  V xa, xb, ra, rb;
  int64_t j = 0;
  for (; j < whole; j += P) {
    load_pairs(x + j, xa, xb);
    load_pairs(residual + j, ra, rb);
    store_pairs<false>(sum + j, xa + ra, xb + rb);  // a sum of two T values: its NaNs have zero low bits
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    (V::load(x + j, n) + V::load(residual + j, n)).store(sum + j, n);
  }
}

// The forward's last pass, y = xhat * gamma + beta (kCheckNaN: see store_pairs), a pair of vectors (pairs) or a tail
// vector (tail) at a time: run by ln_affine_row alone, or inside the next row's statistics loop (deviation_sums).
template <bool kCheckNaN, class V, class T, class W>
struct AffinePass {
  const T* x;
  const W* gamma;
  const W* beta;
  T* y;
  const RowNorm<V>& norm;

  void pairs(int64_t j) const {
    V a, b, ga, gb, ba, bb;
    load_pairs(x + j, a, b);
    load_pairs(gamma + j, ga, gb);
    load_pairs(beta + j, ba, bb);
    store_pairs<kCheckNaN>(y + j, ln_affine(norm.xhat(a), ga, ba), ln_affine(norm.xhat(b), gb, bb));
  }
  void tail(int64_t j, int n) const {
    ln_affine(norm.xhat(V::load(x + j, n)), V::load(gamma + j, n), V::load(beta + j, n)).store(y + j, n);
  }
};

// Nothing to run alongside a statistics pass.
struct NoPass {
  void pairs(int64_t) const {}
  void tail(int64_t, int) const {}
};

template <bool kCheckNaN, class V, class T, class W>
void ln_affine_row(const T* x, const W* gamma, const W* beta, T* y, int64_t cols, const RowNorm<V>& norm) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  const AffinePass<kCheckNaN, V, T, W> pass{x, gamma, beta, y, norm};
  int64_t j = 0;
  for (; j < whole; j += P) pass.pairs(j);
  for (; j < cols; j += V::kWidth) pass.tail(j, lanes<V>(cols, j));
}

// A row's mean and the sum of its squared deviations from it.
struct RowStats {
  float mean, centred_sq;
};

// Sums over a row of d = x - centre and of d^2.
struct DeviationSums {
  float sum, sq;
};

// Both sums (kWithSum) or d^2's alone, with four accumulators of each: an add or FMA has a latency of 4 cycles and two
// issue per cycle, and two accumulators left the statistics passes latency-bound (0.9x eager on AVX2). `alongside`
// (AffinePass or NoPass) runs over another row of the same length in the same loop, at the same offsets.
template <bool kWithSum, class V, class T, class Pass = NoPass>
DeviationSums deviation_sums(const T* x, int64_t cols, float centre, const Pass& alongside = Pass{}) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P, doubles = cols - cols % (2 * P);
  const V vcentre = V::set1(centre);
  V sum0 = V::zero(), sum1 = V::zero(), sum2 = V::zero(), sum3 = V::zero(), a0, b0, a1, b1;
  V sq0 = V::zero(), sq1 = V::zero(), sq2 = V::zero(), sq3 = V::zero();
  int64_t j = 0;
  for (; j < doubles; j += 2 * P) {
    alongside.pairs(j);
    alongside.pairs(j + P);
    load_pairs(x + j, a0, b0);
    load_pairs(x + j + P, a1, b1);
    a0 = a0 - vcentre, b0 = b0 - vcentre, a1 = a1 - vcentre, b1 = b1 - vcentre;
    if constexpr (kWithSum) {
      sum0 = sum0 + a0;
      sum1 = sum1 + b0;
      sum2 = sum2 + a1;
      sum3 = sum3 + b1;
    }
    sq0 = fmadd(a0, a0, sq0);
    sq1 = fmadd(b0, b0, sq1);
    sq2 = fmadd(a1, a1, sq2);
    sq3 = fmadd(b1, b1, sq3);
  }
  for (; j < whole; j += P) {
    alongside.pairs(j);
    load_pairs(x + j, a0, b0);
    a0 = a0 - vcentre, b0 = b0 - vcentre;
    if constexpr (kWithSum) {
      sum0 = sum0 + a0;
      sum1 = sum1 + b0;
    }
    sq0 = fmadd(a0, a0, sq0);
    sq1 = fmadd(b0, b0, sq1);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    alongside.tail(j, n);
    const V d = V::select(V::first(n), V::load(x + j, n) - vcentre, V::zero());
    if constexpr (kWithSum) sum2 = sum2 + d;
    sq2 = fmadd(d, d, sq2);
  }
  const float sq = ((sq0 + sq1) + (sq2 + sq3)).sum();
  if constexpr (kWithSum) return {((sum0 + sum1) + (sum2 + sum3)).sum(), sq};
  return {0.f, sq};
}

// Two passes: the mean, then the squared deviations from it (exact centring).
template <class V, class T>
RowStats row_stats_two_pass(const T* x, int64_t cols) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P, doubles = cols - cols % (2 * P);
  // Four accumulators, as in deviation_sums.
  V acc0 = V::zero(), acc1 = V::zero(), acc2 = V::zero(), acc3 = V::zero(), a0, b0, a1, b1;
  int64_t j = 0;
  for (; j < doubles; j += 2 * P) {
    load_pairs(x + j, a0, b0);
    load_pairs(x + j + P, a1, b1);
    acc0 = acc0 + a0;
    acc1 = acc1 + b0;
    acc2 = acc2 + a1;
    acc3 = acc3 + b1;
  }
  for (; j < whole; j += P) {
    load_pairs(x + j, a0, b0);
    acc0 = acc0 + a0;
    acc1 = acc1 + b0;
  }
  for (; j < cols; j += V::kWidth) acc2 = acc2 + V::load(x + j, lanes<V>(cols, j));
  const float mean = ((acc0 + acc1) + (acc2 + acc3)).sum() / static_cast<float>(cols);
  return {mean, deviation_sums<false, V>(x, cols, mean).sq};
}

// One pass, for bf16 rows: the sums of d = x - s and of d^2, with s the median of the row's first, middle and last
// values, give mean = s + sum(d) / n and the centred sum of squares sum(d^2) - sum(d)^2 / n. Shifting by a value of
// the row keeps the cancellation small while s lies within a few standard deviations of the mean (the median of three
// ignores one outlier among them: with x[0] alone, an outlier feature in column 0 sent every row to the fallback,
// 18-28% slower than before this pass); where sum(d^2) exceeds 64x the result (more than 6 of fp32's 24 bits lost),
// a value is not finite or the result is 0, the row takes the two passes, paying this pass on top. With the widened
// weights of ln_forward_rows_typed, the bf16 forward ran 4-7% faster on avx512 and 8-11% on avx2, and 1% slower to 8%
// faster with an outlier in column 0 of every row (2048 x 768-2048, one thread, Intel Xeon, builds alternated in one
// process). fp32 rows, bound by memory, keep the two passes.
template <class T>
float one_pass_shift(const T* x, int64_t cols) {
  const float first = load_as_float(x, 0), middle = load_as_float(x, cols / 2), last = load_as_float(x, cols - 1);
  return std::max(std::min(first, middle), std::min(std::max(first, middle), last));
}

// The row's statistics from its one-pass sums (shifted by `shift`), or from the two passes where those cancelled.
template <class V, class T>
RowStats stats_from_shifted_sums(const T* x, int64_t cols, float shift, DeviationSums sums) {
  constexpr float kMaxCancellation = 64.f;
  const float shifted_mean = sums.sum / static_cast<float>(cols), centred_sq = sums.sq - sums.sum * shifted_mean;
  // Not `sq <= 64 * centred_sq` also catches NaN and inf; a constant row (0 <= 0) takes the two passes too, so that
  // one whose sum overflows gives NaN as torch's does.
  if (!(sums.sq <= kMaxCancellation * centred_sq && centred_sq > 0.f)) return row_stats_two_pass<V>(x, cols);
  return {shift + shifted_mean, centred_sq};
}

template <class V, class T>
RowStats row_stats_one_pass(const T* x, int64_t cols) {
  const float shift = one_pass_shift(x, cols);
  return stats_from_shifted_sums<V>(x, cols, shift, deviation_sums<true, V>(x, cols, shift));
}

// Whether a row's last pass may round without the NaN check (store_pairs): x holds no NaN when its mean is finite, so
// every NaN of y comes from an invalid operation (inf * 0) or a weight.
inline bool rounding_skips_nan_check(bool weights_nan_free, float mean, float rstd) {
  return weights_nan_free && std::isfinite(mean) && std::isfinite(rstd);
}

// Normalises one row; gamma and beta in the row's pair order (the tail in place); weights_nan_free as returned by
// nan_free_low_bits.
template <class V, class T, class W>
void ln_forward_row(const T* x, const W* gamma, const W* beta, T* y, int64_t cols, float eps, float* mean_out,
                    float* rstd_out, bool weights_nan_free) {
  RowStats stats;
  if constexpr (std::is_same<T, float>::value) stats = row_stats_two_pass<V>(x, cols);
  else stats = row_stats_one_pass<V>(x, cols);
  const float mean = stats.mean, rstd = ln_rstd(stats.centred_sq, cols, eps);

  const RowNorm<V> norm(mean, rstd);
  if (rounding_skips_nan_check(weights_nan_free, mean, rstd))
    ln_affine_row<false>(x, gamma, beta, y, cols, norm);
  else
    ln_affine_row<true>(x, gamma, beta, y, cols, norm);
  *mean_out = mean;
  *rstd_out = rstd;
}

// The backward's first pass over R rows at once: each row's means of g = dy * gamma and of g * xhat, and dy * xhat and
// dy added into the column accumulators for dgamma and dbeta (gamma and the accumulators in the rows' pair order).
// The accumulators are read and written once for the R rows: with one row they were four loads and four stores in
// every 2 * kWidth elements, the stores alone most of the pass on AMD EPYC. 8192 rows x 768-2048 columns, 2 threads:
// bf16 two rows 8-20% faster than one, four no faster than two; fp32 (twice the bytes a row, read from memory in both
// passes) two rows 5-20% slower than one.
struct RowGradMeans {
  float g, g_xhat;
};
template <class T>
constexpr int kBackwardRowsAtOnce = std::is_same<T, float>::value ? 1 : 2;

template <class V, class T, class W, int R>
void ln_backward_sums(const T* const* dy, const T* const* x, const float* mean, const float* rstd, const W* gamma,
                      int64_t cols, float* dgamma_acc, float* dbeta_acc, RowGradMeans* means) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  RowNorm<V> norm[R];
  V sum_g[R][2], sum_gx[R][2];
  for (int r = 0; r < R; ++r) {
    norm[r] = RowNorm<V>(mean[r], rstd[r]);
    sum_g[r][0] = sum_g[r][1] = sum_gx[r][0] = sum_gx[r][1] = V::zero();
  }
  V ga, gb, da, db, xa, xb;
  int64_t j = 0;
  for (; j < whole; j += P) {
    load_pairs(gamma + j, ga, gb);
    V dga, dgb, dba, dbb;
    load_pairs(dgamma_acc + j, dga, dgb);
    load_pairs(dbeta_acc + j, dba, dbb);
    for (int r = 0; r < R; ++r) {
      load_pairs(dy[r] + j, da, db);
      load_pairs(x[r] + j, xa, xb);
      const V xha = norm[r].xhat(xa), xhb = norm[r].xhat(xb);
      const V g_a = da * ga, g_b = db * gb;
      sum_g[r][0] = sum_g[r][0] + g_a;
      sum_g[r][1] = sum_g[r][1] + g_b;
      sum_gx[r][0] = fmadd(g_a, xha, sum_gx[r][0]);
      sum_gx[r][1] = fmadd(g_b, xhb, sum_gx[r][1]);
      dga = fmadd(da, xha, dga);
      dgb = fmadd(db, xhb, dgb);
      dba = dba + da;
      dbb = dbb + db;
    }
    store_pairs(dgamma_acc + j, dga, dgb);
    store_pairs(dbeta_acc + j, dba, dbb);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V vgamma = V::load(gamma + j, n);
    for (int r = 0; r < R; ++r) {
      const V vdy = V::load(dy[r] + j, n);  // masked lanes load 0, so their g is 0
      const V xhat = norm[r].xhat(V::load(x[r] + j, n));
      const V g = vdy * vgamma;
      sum_g[r][0] = sum_g[r][0] + g;
      sum_gx[r][0] = fmadd(g, xhat, sum_gx[r][0]);
      fmadd(vdy, xhat, V::load(dgamma_acc + j, n)).store(dgamma_acc + j, n);
      (V::load(dbeta_acc + j, n) + vdy).store(dbeta_acc + j, n);
    }
  }
  const float inv_cols = 1.f / static_cast<float>(cols);
  for (int r = 0; r < R; ++r) {
    means[r].g = (sum_g[r][0] + sum_g[r][1]).sum() * inv_cols;
    means[r].g_xhat = (sum_gx[r][0] + sum_gx[r][1]).sum() * inv_cols;
  }
}

// The backward's second pass: dx of one row (plus dextra, the gradient reaching the residual sum, if any).
// kCheckNaN: see store_pairs.
template <bool kCheckNaN, class V, class T, class W>
void ln_backward_dx(const T* dy, const T* dextra, const T* x, float mean, float rstd, const W* gamma,
                    RowGradMeans means, T* dx, int64_t cols) {
  constexpr int64_t P = 2 * V::kWidth;
  const int64_t whole = cols - cols % P;
  const RowNorm<V> norm(mean, rstd);
  const V mean_g = V::set1(means.g), mean_g_xhat = V::set1(means.g_xhat);
  V da, db, xa, xb, ga, gb, ea, eb;
  int64_t j = 0;
  for (; j < whole; j += P) {
    load_pairs(dy + j, da, db);
    load_pairs(x + j, xa, xb);
    load_pairs(gamma + j, ga, gb);
    V dxa = ln_input_grad(da * ga, norm.xhat(xa), norm.rstd, mean_g, mean_g_xhat);
    V dxb = ln_input_grad(db * gb, norm.xhat(xb), norm.rstd, mean_g, mean_g_xhat);
    if (dextra != nullptr) {
      load_pairs(dextra + j, ea, eb);
      dxa = dxa + ea;
      dxb = dxb + eb;
    }
    store_pairs<kCheckNaN>(dx + j, dxa, dxb);
  }
  for (; j < cols; j += V::kWidth) {
    const int n = lanes<V>(cols, j);
    const V g = V::load(dy + j, n) * V::load(gamma + j, n);
    V d = ln_input_grad(g, norm.xhat(V::load(x + j, n)), norm.rstd, mean_g, mean_g_xhat);
    if (dextra != nullptr) d = d + V::load(dextra + j, n);
    d.store(dx + j, n);
  }
}

// Does a row of T keep its neighbours (weights, accumulators) in an order other than their own (bf16: even/odd)?
template <class T>
constexpr bool kPairOrdered = !std::is_same<T, float>::value;

// The weights for rows of T: as they are when they already are in the rows' pair order (fp32 rows; bf16 weights of
// bf16 rows, a 32-bit lane holding a pair), else (fp32 weights of bf16 rows) copied into it. With kWiden, bf16 weights
// of bf16 rows are converted to fp32 in pair order too (the forward: see ln_forward_rows_typed).
template <class T, class W, bool kWiden>
using RowWeight = std::conditional_t<kPairOrdered<T> && kWiden, float, W>;

template <class V, class T, class W, bool kWiden = false>
const RowWeight<T, W, kWiden>* weights_in_pair_order(const void* w, int64_t cols, std::vector<float>& buffer) {
  const W* src = static_cast<const W*>(w);
  if constexpr (!kPairOrdered<T> || (!kWiden && !std::is_same<W, float>::value)) {
    return src;
  } else {
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
}

// Adds column sums kept in bf16 rows' pair order into natural-order ones.
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

// Software prefetch of the row a few KiB ahead (common/prefetch.h), where a row is read from memory once (the first
// pass) and then worked on in cache: the hardware prefetchers follow demand misses, so during the in-cache passes
// nothing fetched the next row. Measured per-call (8192 rows, AMD EPYC, 1-2 threads, alternated in one process):
// LayerNorm forward 5-20% faster, bf16 backward 0-30%; fp32 backward (which reads dy and x from memory in both
// passes) and add+LayerNorm (three streams) were 5-15% slower with it, so they do without. The bf16 backward asks
// only where backward_prefetches_rows says.
template <class T>
__attribute__((always_inline)) inline void prefetch_row(const T* rows, int64_t r, int64_t cols, int64_t total_rows) {
  const int64_t row_bytes = cols * static_cast<int64_t>(sizeof(T)), ahead = r + prefetch_rows_ahead(row_bytes);
  if (ahead < total_rows) prefetch_for_read(rows + ahead * cols, row_bytes);
}

// Whether the bf16 backward prefetches dy's and x's rows ahead. On AMD CPUs, yes: its bf16 backward was 0-30% faster
// with it (Zen 5 EPYC, 8192 rows). On the Intel Xeon measured (AMX generation; 8192 bf16 rows, 2 threads, each
// backward after a fresh forward, with and without alternated in one process) the plain backward ran 3-17% faster
// without (its L2 streamer already runs ahead of two input streams), while add + LayerNorm's, which also reads the
// residual's gradient (dextra), ran 6-18% slower without at 768-1024 columns (at 2048: avx512 the same, avx2 11%
// faster).
inline bool backward_prefetches_rows(const LayerNormBackwardArgs& a) {
  return cpu_vendor_is_amd() || a.dextra != nullptr;
}

// bf16 LayerNorm rows with each row's last pass run in the loop of the next row's one-pass statistics. One row at a
// time, a row's last pass waited on its statistics (a loop, two vector reductions, a division and a square root),
// and the next row's statistics queued behind that pass. Side by side the two loops are independent. Each row is
// summed in the same order either way (deviation_sums), so results are the same bit for bit. With a residual, each
// row normalises the stored x + residual (add_row), written just before its statistics are summed. 8192 rows, 2
// threads, Intel Xeon, alternated in one process: avx512 LayerNorm 0-11% faster (5-9% on one thread), add + LayerNorm
// 5-11%.
// The overlapped loop keeps about 18 vectors live (eight accumulators, the next row's four, the last pass's operands
// and constants). With 16 registers GCC kept accumulators on the stack, and avx2 rows of 2048 ran 3-7% slower than
// one row at a time (2.5-7% faster at 768-1024), so paths with 16 registers keep one row at a time.
template <class V>
constexpr bool kOverlapRows = V::kRegisters >= 32;

template <class V, class T, class W>
void ln_forward_rows_overlapped(const LayerNormForwardArgs& a, const W* gamma, const W* beta, bool weights_nan_free,
                                int64_t begin, int64_t end) {
  const int64_t c = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  auto input_row = [&](int64_t r) -> const T* {  // the row to normalise: x's, or the stored x + residual
    if (res == nullptr) return x + r * c;
    T* sum = static_cast<T*>(a.sum) + r * c;
    add_row<V>(x + r * c, res + r * c, sum, c);
    return sum;
  };
  const T* row = input_row(begin);
  float shift = one_pass_shift(row, c);
  DeviationSums sums = deviation_sums<true, V>(row, c, shift);
  for (int64_t r = begin; r < end; ++r) {
    if (res == nullptr) prefetch_row(x, r + 1, c, a.rows);
    T* y = static_cast<T*>(a.y) + r * c;
    const RowStats stats = stats_from_shifted_sums<V>(row, c, shift, sums);
    const float mean = stats.mean, rstd = ln_rstd(stats.centred_sq, c, a.eps);
    a.mean[r] = mean;
    a.rstd[r] = rstd;
    const RowNorm<V> norm(mean, rstd);
    const bool unchecked = rounding_skips_nan_check(weights_nan_free, mean, rstd);
    if (r + 1 == end) {
      if (unchecked) ln_affine_row<false>(row, gamma, beta, y, c, norm);
      else ln_affine_row<true>(row, gamma, beta, y, c, norm);
      break;
    }
    const T* next = input_row(r + 1);
    shift = one_pass_shift(next, c);
    if (unchecked)
      sums = deviation_sums<true, V>(next, c, shift, AffinePass<false, V, T, W>{row, gamma, beta, y, norm});
    else
      sums = deviation_sums<true, V>(next, c, shift, AffinePass<true, V, T, W>{row, gamma, beta, y, norm});
    row = next;
  }
}

template <class V, class T, class W>
void ln_forward_rows_typed(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  const int64_t c = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  std::vector<float> gamma_buf, beta_buf;
  // Widened once per call: read as bf16, each vector of gamma and beta cost two more instructions in the last pass
  // (measured with the one-pass statistics, row_stats_one_pass; the backward, bound by loads, was 3-8% slower with
  // widened gamma, so it reads bf16 weights as they are).
  const auto* gamma = weights_in_pair_order<V, T, W, true>(a.gamma, c, gamma_buf);
  const auto* beta = weights_in_pair_order<V, T, W, true>(a.beta, c, beta_buf);
  // On the weights as given: a bf16 NaN widened to fp32 keeps zero low bits.
  const bool weights_nan_free = nan_free_low_bits(static_cast<const W*>(a.gamma), c) &&
                                nan_free_low_bits(static_cast<const W*>(a.beta), c);
  if constexpr (kPairOrdered<T> && kOverlapRows<V>) {
    ln_forward_rows_overlapped<V, T>(a, gamma, beta, weights_nan_free, begin, end);
  } else {
    for (int64_t r = begin; r < end; ++r) {
      if (res == nullptr) prefetch_row(x, r, c, a.rows);
      const T* row = x + r * c;
      if (res != nullptr) {
        T* sum = static_cast<T*>(a.sum) + r * c;
        add_row<V>(row, res + r * c, sum, c);
        row = sum;
      }
      ln_forward_row<V>(row, gamma, beta, static_cast<T*>(a.y) + r * c, c, a.eps, a.mean + r, a.rstd + r,
                        weights_nan_free);
    }
  }
}

template <class V, class T, class W>
void ln_backward_rows_typed(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                            float* dbeta_acc) {
  const int64_t c = a.cols;
  const T* dy = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  const T* dextra = static_cast<const T*>(a.dextra);
  T* dx = static_cast<T*>(a.dx);
  std::vector<float> gamma_buf, dgamma_pairs, dbeta_pairs;
  const W* gamma = weights_in_pair_order<V, T, W>(a.gamma, c, gamma_buf);
  const bool weights_nan_free = nan_free_low_bits(gamma, c);
  float* dg = dgamma_acc;
  float* db = dbeta_acc;
  if constexpr (kPairOrdered<T>) {  // accumulate in pair order, add to the caller's sums in theirs at the end
    dgamma_pairs.assign(c, 0.f);
    dbeta_pairs.assign(c, 0.f);
    dg = dgamma_pairs.data();
    db = dbeta_pairs.data();
  }
  constexpr int R = kBackwardRowsAtOnce<T>;
  const bool prefetch = kPairOrdered<T> && backward_prefetches_rows(a);
  for (int64_t r0 = begin; r0 < end; r0 += R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, end - r0));
    const T* dy_rows[R];
    const T* x_rows[R];
    for (int i = 0; i < rows; ++i) {
      if (prefetch) {
        prefetch_row(dy, r0 + i, c, a.rows);
        prefetch_row(x, r0 + i, c, a.rows);
      }
      dy_rows[i] = dy + (r0 + i) * c;
      x_rows[i] = x + (r0 + i) * c;
    }
    RowGradMeans means[R] = {};
    if (rows == R) {
      ln_backward_sums<V, T, W, R>(dy_rows, x_rows, a.mean + r0, a.rstd + r0, gamma, c, dg, db, means);
    } else {
      for (int i = 0; i < rows; ++i)
        ln_backward_sums<V, T, W, 1>(dy_rows + i, x_rows + i, a.mean + r0 + i, a.rstd + r0 + i, gamma, c, dg, db,
                                     means + i);
    }
    for (int i = 0; i < rows; ++i) {
      const int64_t r = r0 + i;
      // dy and x hold no NaN when these are finite (see ln_forward_row)
      const bool unchecked = weights_nan_free && std::isfinite(a.mean[r]) && std::isfinite(a.rstd[r]) &&
                             std::isfinite(means[i].g) && std::isfinite(means[i].g_xhat);
      const T* extra = dextra ? dextra + r * c : nullptr;
      if (unchecked)
        ln_backward_dx<false, V>(dy_rows[i], extra, x_rows[i], a.mean[r], a.rstd[r], gamma, means[i], dx + r * c, c);
      else
        ln_backward_dx<true, V>(dy_rows[i], extra, x_rows[i], a.mean[r], a.rstd[r], gamma, means[i], dx + r * c, c);
    }
  }
  if constexpr (kPairOrdered<T>) {
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
