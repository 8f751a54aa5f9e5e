// Element math of the cross-entropy kernels, shared by the CPU and CUDA code.
#pragma once
#include "common/macros.h"

namespace gpt3d {
namespace {

// d(mean loss)/d(logit) of one element: scale * (p - 1) at the label's column, scale * p elsewhere, where
// p = exp(logit - lse) is the element's softmax probability.
GPT3D_HD float cross_entropy_grad(float p, bool at_label, float scale) {
  return (at_label ? p - 1.f : p) * scale;
}

GPT3D_HD bool label_in_range(long long label, long long real_cols) { return label >= 0 && label < real_cols; }

}  // namespace
}  // namespace gpt3d
