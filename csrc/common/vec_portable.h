// One-lane "vector" with the same interface as VecAvx512, so the row kernels compile unchanged for any CPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/bf16.h"

namespace gpt3d {
namespace {

struct VecPortable {
  static constexpr int kWidth = 1;
  using Mask = bool;
  float v;

  static VecPortable zero() { return {0.f}; }
  static VecPortable set1(float f) { return {f}; }
  static VecPortable load(const float* p, int n = kWidth) { return {n > 0 ? p[0] : 0.f}; }
  static VecPortable load(const uint16_t* p, int n = kWidth) { return {n > 0 ? bf16_to_float(p[0]) : 0.f}; }
  void store(float* p, int n = kWidth) const { if (n > 0) p[0] = v; }
  void store(uint16_t* p, int n = kWidth) const { if (n > 0) p[0] = float_to_bf16(v); }
  // Lanes [0, n) valid.
  static Mask first(int n) { return n > 0; }
  // Lanes where the bool mask byte is true, restricted to the first n.
  static Mask load_mask(const bool* p, int n = kWidth) { return n > 0 && p[0]; }
  static VecPortable select(Mask m, VecPortable a, VecPortable b) { return m ? a : b; }
  static VecPortable max(VecPortable a, VecPortable b) { return {a.v > b.v ? a.v : b.v}; }
  static VecPortable exp(VecPortable a) { return {std::exp(a.v)}; }
  float sum() const { return v; }
  float hmax() const { return v; }
};

inline VecPortable operator+(VecPortable a, VecPortable b) { return {a.v + b.v}; }
inline VecPortable operator-(VecPortable a, VecPortable b) { return {a.v - b.v}; }
inline VecPortable operator*(VecPortable a, VecPortable b) { return {a.v * b.v}; }

}  // namespace
}  // namespace gpt3d
