// Blocked causal attention over whole heads, written once over a vector type V (the softmax rows' instruction set).
// Included through block_attention_cpu_instance.h by block_attention_cpu_{avx512,avx2,portable}.cpp.
//
// Row-major [rows, cols] matrices are handed to the column-major BLAS as their transposes, so each product below is
// written as the transposed one: row-major C = A B^T is column-major C^T = B A^T, i.e. sgemm('T', 'N') with B first.
#pragma once
#include <cstdint>
#include <cstring>

#include "attention/block_attention_args.h"
#include "common/blas.h"
#include "softmax/softmax_cpu_rows.h"

namespace gpt3d {
namespace {

template <class V>
void block_attention_forward_head(const BlockAttentionForwardArgs& a, int64_t head, float* scratch) {
  const int64_t s = a.s, d = a.d, b = head / a.heads, h = head % a.heads;
  const float *q = a.q.head(b, h), *k = a.k.head(b, h), *v = a.v.head(b, h);
  float* out = a.out.head(b, h);
  float* p = a.probs + head * block_probs_per_head(s, a.block);
  const int dd = static_cast<int>(d), ldq = static_cast<int>(a.q.stride_s), ldk = static_cast<int>(a.k.stride_s),
            ldv = static_cast<int>(a.v.stride_s), ldo = static_cast<int>(a.out.stride_s);
  for (int64_t start = 0; start < s; start += a.block) {
    const int64_t end = start + a.block < s ? start + a.block : s, rows = end - start;
    const int n_keys = static_cast<int>(end), n_rows = static_cast<int>(rows);
    // scores [rows, end] = q[start:end] k[:end]^T
    blas_sgemm('T', 'N', n_keys, n_rows, dd, 1.f, k, ldk, q + start * a.q.stride_s, ldq, 0.f, p, n_keys);
    for (int64_t i = 0; i < rows; ++i)  // in place: row i sees keys [0, start + i]
      softmax_forward_row<V, float>(p + i * end, nullptr, p + i * end, end, start + i + 1, a.scale, scratch);
    // out[start:end] = probs v[:end]
    blas_sgemm('N', 'N', dd, n_rows, n_keys, 1.f, v, ldv, p, n_keys, 0.f, out + start * a.out.stride_s, ldo);
    p += rows * end;
  }
}

// `dp` holds block x s floats private to the calling thread.
// dq, dk and dv are contiguous [batch, heads, s, d] (row stride d): zeroed per head here before accumulating.
template <class V>
void block_attention_backward_head(const BlockAttentionBackwardArgs& a, int64_t head, float* dp) {
  const int64_t s = a.s, d = a.d, b = head / a.heads, h = head % a.heads;
  const float *q = a.q.head(b, h), *k = a.k.head(b, h), *v = a.v.head(b, h), *dout = a.dout.head(b, h);
  float *dq = a.dq.head(b, h), *dk = a.dk.head(b, h), *dv = a.dv.head(b, h);
  const float* p = a.probs + head * block_probs_per_head(s, a.block);
  const int dd = static_cast<int>(d), ldq = static_cast<int>(a.q.stride_s), ldk = static_cast<int>(a.k.stride_s),
            ldv = static_cast<int>(a.v.stride_s), ldo = static_cast<int>(a.dout.stride_s);
  std::memset(dk, 0, sizeof(float) * s * d);
  std::memset(dv, 0, sizeof(float) * s * d);
  for (int64_t start = 0; start < s; start += a.block) {
    const int64_t end = start + a.block < s ? start + a.block : s, rows = end - start;
    const int n_keys = static_cast<int>(end), n_rows = static_cast<int>(rows);
    const float* dout_block = dout + start * a.dout.stride_s;
    // dv[:end] += probs^T dout[start:end]
    blas_sgemm('N', 'T', dd, n_keys, n_rows, 1.f, dout_block, ldo, p, n_keys, 1.f, dv, dd);
    // dprobs [rows, end] = dout[start:end] v[:end]^T, then d scores in place
    blas_sgemm('T', 'N', n_keys, n_rows, dd, 1.f, v, ldv, dout_block, ldo, 0.f, dp, n_keys);
    for (int64_t i = 0; i < rows; ++i)
      softmax_backward_row<V, float>(dp + i * end, p + i * end, dp + i * end, end, start + i + 1, a.scale);
    // dq[start:end] = dscores k[:end]
    blas_sgemm('N', 'N', dd, n_rows, n_keys, 1.f, k, ldk, dp, n_keys, 0.f, dq + start * d, dd);
    // dk[:end] += dscores^T q[start:end]
    blas_sgemm('N', 'T', dd, n_keys, n_rows, 1.f, q + start * a.q.stride_s, ldq, dp, n_keys, 1.f, dk, dd);
    p += rows * end;
  }
}

}  // namespace
}  // namespace gpt3d
