// GELU, tanh approximation (GPT-2's; torch's gelu(approximate="tanh")), shared by the CPU and CUDA kernels:
//   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).
// Computed as x * s with s = 0.5 (1 + tanh(u)) = 1 / (1 + e^(-2u)): one exponential, and no 1 + tanh(u)
// cancellation for negative x. The derivative, from the same s:
//   gelu'(x) = s + x s (1 - s) 2u'(x),  2u'(x) = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2).
#pragma once

namespace gpt3d {
namespace gelu_math {

constexpr float kTwoSqrt2OverPi = 1.5957691216057308f;  // 2 sqrt(2/pi)
constexpr float kCubic = 0.044715f;
// -2u = x * (kNegLinear + kNegCubic x^2)
constexpr float kNegLinear = -kTwoSqrt2OverPi;
constexpr float kNegCubic = -kTwoSqrt2OverPi * kCubic;
// 2u' = kSlope + kSlopeCubic x^2
constexpr float kSlope = kTwoSqrt2OverPi;
constexpr float kSlopeCubic = 3.f * kTwoSqrt2OverPi * kCubic;

}  // namespace gelu_math
}  // namespace gpt3d
