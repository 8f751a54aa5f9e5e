// Per-row math of the scaled masked softmax, shared by the CPU kernels (T = a SIMD vector type) and the CUDA kernels
// (T = float). y = softmax(scale * x) over the unmasked keys of a row; masked keys and fully masked rows give 0.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace gpt3d {
namespace {

// Causal mask aligned to the bottom-right corner: query q of sq may see keys [0, q + 1 + sk - sq), so with sq == sk it
// is the usual lower triangle, and with sq < sk (queries are the last sq positions) each query sees its whole past.
GPT3D_HD int64_t causal_visible_keys(int64_t q, int64_t sq, int64_t sk) {
  const int64_t n = q + 1 + (sk - sq);
  return n < 0 ? 0 : (n > sk ? sk : n);
}

// d loss / d x for one element: scale * y * (dy - sum_k dy_k y_k).
template <class T>
GPT3D_HD T softmax_input_grad(T dy, T y, T dot, T scale) { return scale * y * (dy - dot); }

}  // namespace
}  // namespace gpt3d
