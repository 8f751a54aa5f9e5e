// The GELU span kernels over one vector type V (VecAvx512, VecAvx2 or VecPortable), for float and bf16 (uint16_t)
// storage; the math is fp32 (gelu_math.h). Included by gelu_cpu_instance.h once per instruction set.
#pragma once
#include <cstdint>

#include "gelu/gelu_args.h"
#include "gelu/gelu_math.h"

namespace gpt3d {
namespace {

// s = 1 / (1 + e^(-2u)) for the lanes of x.
template <class V>
V gelu_gate(V x) {
  using namespace gelu_math;
  const V x2 = x * x;
  const V neg_two_u = x * fmadd(x2, V::set1(kNegCubic), V::set1(kNegLinear));
  return V::set1(1.f) / (V::set1(1.f) + V::exp(neg_two_u));
}

template <class V, class T>
void gelu_forward_span_typed(const T* x, T* y, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + V::kWidth <= end; i += V::kWidth) {
    const V v = V::load(x + i);
    (v * gelu_gate(v)).store(y + i);
  }
  if (i < end) {
    const int n = static_cast<int>(end - i);
    const V v = V::load(x + i, n);
    (v * gelu_gate(v)).store(y + i, n);
  }
}

template <class V>
V gelu_grad(V x, V dy) {
  using namespace gelu_math;
  const V s = gelu_gate(x);
  const V slope = fmadd(x * x, V::set1(kSlopeCubic), V::set1(kSlope));
  const V ds = x * (s * (V::set1(1.f) - s)) * slope;  // x s (1 - s) 2u'
  return dy * (s + ds);
}

template <class V, class T>
void gelu_backward_span_typed(const T* x, const T* dy, T* dx, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + V::kWidth <= end; i += V::kWidth) gelu_grad(V::load(x + i), V::load(dy + i)).store(dx + i);
  if (i < end) {
    const int n = static_cast<int>(end - i);
    gelu_grad(V::load(x + i, n), V::load(dy + i, n)).store(dx + i, n);
  }
}

template <class V>
void gelu_forward_span_dispatch(const GeluArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == DType::kBFloat16) {
    gelu_forward_span_typed<V>(static_cast<const uint16_t*>(a.x), static_cast<uint16_t*>(a.out), begin, end);
  } else {
    gelu_forward_span_typed<V>(static_cast<const float*>(a.x), static_cast<float*>(a.out), begin, end);
  }
}

template <class V>
void gelu_backward_span_dispatch(const GeluArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == DType::kBFloat16) {
    gelu_backward_span_typed<V>(static_cast<const uint16_t*>(a.x), static_cast<const uint16_t*>(a.dy),
                                static_cast<uint16_t*>(a.out), begin, end);
  } else {
    gelu_backward_span_typed<V>(static_cast<const float*>(a.x), static_cast<const float*>(a.dy),
                                static_cast<float*>(a.out), begin, end);
  }
}

}  // namespace
}  // namespace gpt3d
