// Per-block math of block-sparse causal attention, shared by the CPU (C++) and CUDA kernels.
//
// Notation for one (query block i, key block j) pair of one (batch, head):
//   S = (scale * Q_i) K_j^T          scores; in the diagonal block (i == j) keys after the query are masked (-inf)
//   forward, online softmax over the key blocks of row i:  m = running row max, l = running row sum of exp(S - m)
//   lse = m + log(l)                 saved for backward, which recomputes P = exp(S - lse) without another softmax
//   backward: dP = dO V_j^T, dS = P * (dP - delta) with delta = rowsum(dO * O); dV += P^T dO, dK += dS^T (scale Q),
//             dQ += scale * dS K
// The layout arrives as CSR per (head, query block row): row_ptr[h * nb + i] .. row_ptr[h * nb + i + 1] index col_idx;
// its transpose (CSC: col_ptr / row_idx) drives the key-block-major backward.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define GPT3D_HD __host__ __device__ __forceinline__
#else
#define GPT3D_HD inline
#endif

namespace gpt3d_sparse {

// bf16 is carried as raw uint16 bits so this header needs neither torch nor cuda_bf16.h.
GPT3D_HD float bf16_to_float(uint16_t bits) {
  union { uint32_t u; float f; } v;
  v.u = static_cast<uint32_t>(bits) << 16;
  return v.f;
}

GPT3D_HD uint16_t float_to_bf16(float x) {  // round to nearest even, NaN stays NaN
  union { uint32_t u; float f; } v;
  v.f = x;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((v.u >> 16) | 0x40u);
  v.u += 0x7fffu + ((v.u >> 16) & 1u);
  return static_cast<uint16_t>(v.u >> 16);
}

GPT3D_HD float load_as_float(const float* p, int64_t i) { return p[i]; }
GPT3D_HD float load_as_float(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
GPT3D_HD void store_from_float(float* p, int64_t i, float x) { p[i] = x; }
GPT3D_HD void store_from_float(uint16_t* p, int64_t i, float x) { p[i] = float_to_bf16(x); }

// Causal rule inside a block pair: key row c of block j is visible to query row r of block i.
GPT3D_HD bool key_visible(int64_t qblock, int64_t kblock, int r, int c) { return kblock < qblock || c <= r; }

// Online-softmax step for one query row: given the running max and the max of the new scores, the new running max
// and the factor that rescales what was accumulated so far. m_old = -inf (no block seen yet) gives factor 0.
struct RowRescale {
  float m_new;
  float alpha;
};

template <typename ExpFn>
GPT3D_HD RowRescale online_softmax_rescale(float m_old, float block_max, ExpFn exp_fn) {
  RowRescale r;
  r.m_new = m_old > block_max ? m_old : block_max;
  r.alpha = exp_fn(m_old - r.m_new);  // exp(-inf) = 0 when m_old = -inf
  return r;
}

// Log-sum-exp of a finished row (l > 0: the diagonal key is always visible).
template <typename LogFn>
GPT3D_HD float row_logsumexp(float m, float l, LogFn log_fn) { return m + log_fn(l); }

// Gradient of the scores from the recomputed probability: dS = P * (dP - delta).
GPT3D_HD float score_grad(float p, float dp, float delta) { return p * (dp - delta); }

}  // namespace gpt3d_sparse
