// Per-element LayerNorm math shared by the CPU kernels (T = a SIMD vector type with + - *) and the CUDA kernels
// (T = float). Statistics are fp32 whatever the storage type: mean, then the variance of the centred values (two passes
// over a row held in cache or registers), which stays accurate where E[x^2] - E[x]^2 cancels.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace gpt3d {
namespace {

// 1 / sqrt(biased variance + eps): what forward saves for backward.
GPT3D_HD float ln_rstd(float sum_sq_centred, int64_t cols, float eps) {
  const float var = sum_sq_centred / static_cast<float>(cols);
#if defined(__CUDA_ARCH__)
  return rsqrtf(var + eps);
#else
  return 1.f / std::sqrt(var + eps);
#endif
}

template <class T>
GPT3D_HD T ln_normalize(T x, T mean, T rstd) { return (x - mean) * rstd; }

// a * b + c; the CPU vector types define a fused (one rounding) version, found by argument-dependent lookup.
GPT3D_HD float fmadd(float a, float b, float c) { return a * b + c; }

template <class T>
GPT3D_HD T ln_affine(T xhat, T gamma, T beta) { return fmadd(xhat, gamma, beta); }

// d loss / d x for one element, given the row means of g = dy * gamma and of g * xhat.
template <class T>
GPT3D_HD T ln_input_grad(T g, T xhat, T rstd, T mean_g, T mean_g_xhat) { return rstd * (g - mean_g - xhat * mean_g_xhat); }

}  // namespace
}  // namespace gpt3d
