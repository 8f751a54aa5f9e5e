// fp32 -> bf16 round to nearest even (as torch) on a whole vector, written once with GCC / Clang generic vectors for
// the AVX2 and portable paths: F is a float vector (__m256 or VecPortable's 4 lanes), U the uint32 vector of its size.
// (VecAvx512::rounded_bf16_bits computes the same bits in one instruction fewer, with a mask.) Include after the
// including file's target pragma, so each path compiles it for its own instruction set.
#pragma once
#include <cstdint>

namespace gpt3d {
namespace {

// The rounded fp32 bits, the bf16 in each lane's high half; NaN lanes become quiet NaNs (their payload kept).
// kCheckNaN false skips the NaN check: only for values whose NaNs, if any, have zero low 16 bits. Every NaN computed
// from bf16 operands (or carried from one) has, as does the default NaN of an invalid operation (0xffc00000), and the
// rounding adds at most 0x8000 there, so such a NaN stays NaN without the check.
template <bool kCheckNaN, class U, class F>
inline U rounded_bf16_bits(F v) {
  const U bits = reinterpret_cast<U>(v);
  const U rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  if constexpr (!kCheckNaN) return rounded;
  return (v != v) ? (bits | 0x00400000u) : rounded;
}

}  // namespace
}  // namespace gpt3d
