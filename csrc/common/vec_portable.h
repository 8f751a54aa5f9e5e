// 4-lane fp32 vector in portable C++ with the interface of VecAvx512, so the row kernels compile unchanged for any CPU.
// With GCC or Clang it is a generic 16-byte vector type (vector_size), which the compiler maps onto the baseline SIMD
// register of every 64-bit target (SSE2 on x86-64, NEON on AArch64) without any intrinsic. A one-lane type left the
// row reductions a serial chain of dependent adds and a library expf per element (2-3x slower); 32-byte vectors are
// split by the compiler through the stack on SSE2 (slower still). exp is the branch-free polynomial of the AVX paths.
// Other compilers get the same interface on one lane.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/bf16.h"
#include "common/bf16_round.h"

#if defined(__GNUC__) || defined(__clang__)

namespace gpt3d {
namespace {

// Copies the first n (of 4) lanes of `lane` bytes each: a fixed-size copy (a plain vector load or store) for whole
// vectors, a short library copy only for a row's tail.
template <size_t lane>
inline void copy_lanes(void* dst, const void* src, int n) {
  if (n >= 4) std::memcpy(dst, src, 4 * lane);
  else if (n > 0) std::memcpy(dst, src, lane * static_cast<size_t>(n));
}

struct VecPortable {
  static constexpr int kWidth = 4;
  static constexpr int kRegisters = 16;  // SSE2: xmm0-15 (AArch64 has 32; the smaller count is the one to plan for)
  typedef float F __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
  using Mask = I;  // -1 = selected, 0 = not
  F v;

  static VecPortable zero() { return {F{}}; }
  static VecPortable set1(float f) { return {F{} + f}; }
  // Lanes [0, n) valid.
  static Mask first(int n) { return I{0, 1, 2, 3} < n; }
  static VecPortable load(const float* p, int n = kWidth) {
    F r{};
    copy_lanes<sizeof(float)>(&r, p, n);
    return {r};
  }
  static VecPortable load(const uint16_t* p, int n = kWidth) {
    typedef uint16_t H __attribute__((vector_size(8)));
    H h{};
    copy_lanes<sizeof(uint16_t)>(&h, p, n);
    return {reinterpret_cast<F>(__builtin_convertvector(h, I) << 16)};
  }
  void store(float* p, int n = kWidth) const {
    copy_lanes<sizeof(float)>(p, &v, n);
  }
  // fp32 bits rounded to nearest even at bit 16, the bf16 in the high half (common/bf16_round.h).
  typedef uint32_t U __attribute__((vector_size(16)));
  template <bool kCheckNaN = true>
  static U rounded_bf16_bits(F v) { return gpt3d::rounded_bf16_bits<kCheckNaN, U>(v); }
  void store(uint16_t* p, int n = kWidth) const {
    typedef uint16_t H __attribute__((vector_size(8)));
    const H h = __builtin_convertvector(rounded_bf16_bits(v) >> 16, H);
    copy_lanes<sizeof(uint16_t)>(p, &h, n);
  }
  // As VecAvx512::load_bf16_pairs: 2 * kWidth bf16 values, even positions in `even`, odd in `odd`, no shuffle. On a
  // big-endian target the even element is a 32-bit lane's high half.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  static constexpr bool kEvenIsHigh = true;
#else
  static constexpr bool kEvenIsHigh = false;
#endif
  static void load_bf16_pairs(const uint16_t* p, VecPortable& even, VecPortable& odd) {
    U w;
    std::memcpy(&w, p, sizeof(w));
    (kEvenIsHigh ? odd : even).v = reinterpret_cast<F>(w << 16);
    (kEvenIsHigh ? even : odd).v = reinterpret_cast<F>(w & 0xffff0000u);
  }
  // The inverse of load_bf16_pairs, rounding as store(uint16_t*) does; kCheckNaN: common/bf16_round.h.
  template <bool kCheckNaN = true>
  static void store_bf16_pairs(uint16_t* p, VecPortable even, VecPortable odd) {
    const U high = rounded_bf16_bits<kCheckNaN>((kEvenIsHigh ? even : odd).v);
    const U low = rounded_bf16_bits<kCheckNaN>((kEvenIsHigh ? odd : even).v);
    const U w = (high & 0xffff0000u) | (low >> 16);
    std::memcpy(p, &w, sizeof(w));
  }
  // Lanes where the bool mask byte is true, restricted to the first n. The 4 bytes are read as one 32-bit word,
  // copied to every lane, and each lane tests its own byte: widening the bytes with __builtin_convertvector took
  // four byte extractions and inserts on SSE2 (no pmovzxbd), and the masked softmax ran 1.4x slower than unmasked.
  static Mask load_mask(const bool* p, int n = kWidth) {
    uint32_t word = 0;
    copy_lanes<1>(&word, p, n);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    constexpr U kLaneByte = {0xff000000u, 0xff0000u, 0xff00u, 0xffu};
#else
    constexpr U kLaneByte = {0xffu, 0xff00u, 0xff0000u, 0xff000000u};
#endif
    return ((U{} + word) & kLaneByte) != 0;
  }
  static VecPortable select(Mask m, VecPortable a, VecPortable b) { return {m ? a.v : b.v}; }
  static VecPortable max(VecPortable a, VecPortable b) { return {a.v > b.v ? a.v : b.v}; }

  // e^x as VecAvx2::exp: x = n ln2 + r (n rounded to nearest by adding and subtracting 1.5 * 2^23), e^r by its
  // degree-6 Taylor polynomial, 2^n as two normal exponent-field factors so results down to fp32's denormals match.
  // Dead lanes (at or below -103.97, -inf, NaN) compute e^0 and are zeroed: no denormal products, exact 0 for masks.
  static VecPortable exp(VecPortable a) {
    const I live = a.v > -103.97f;
    const F x = live ? (a.v < 88.7f ? a.v : F{} + 88.7f) : F{};
    const F n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
    F r = x - n * 0.693145751953125f;  // ln 2 in two parts: n times the high part is exact
    r = r - n * 1.428606765330187045e-06f;
    F p = F{} + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const I ni = __builtin_convertvector(n, I), n1 = ni >> 1;
    const F s1 = reinterpret_cast<F>((n1 + 127) << 23), s2 = reinterpret_cast<F>((ni - n1 + 127) << 23);
    return {live ? p * s1 * s2 : F{}};
  }
  float sum() const {  // pairwise, as the SIMD paths reduce
    return (v[0] + v[2]) + (v[1] + v[3]);
  }
  float hmax() const {
    float m = v[0];
    for (int i = 1; i < kWidth; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
};

}  // namespace
}  // namespace gpt3d

#else  // another compiler: one lane, same interface

namespace gpt3d {
namespace {

struct VecPortable {
  static constexpr int kWidth = 1;
  static constexpr int kRegisters = 16;
  using Mask = bool;
  float v;

  static VecPortable zero() { return {0.f}; }
  static VecPortable set1(float f) { return {f}; }
  static VecPortable load(const float* p, int n = kWidth) { return {n > 0 ? p[0] : 0.f}; }
  static VecPortable load(const uint16_t* p, int n = kWidth) { return {n > 0 ? bf16_to_float(p[0]) : 0.f}; }
  void store(float* p, int n = kWidth) const { if (n > 0) p[0] = v; }
  void store(uint16_t* p, int n = kWidth) const { if (n > 0) p[0] = float_to_bf16(v); }
  static void load_bf16_pairs(const uint16_t* p, VecPortable& even, VecPortable& odd) {
    even.v = bf16_to_float(p[0]);
    odd.v = bf16_to_float(p[1]);
  }
  template <bool kCheckNaN = true>
  static void store_bf16_pairs(uint16_t* p, VecPortable even, VecPortable odd) {
    p[0] = float_to_bf16(even.v);
    p[1] = float_to_bf16(odd.v);
  }
  static Mask first(int n) { return n > 0; }
  static Mask load_mask(const bool* p, int n = kWidth) { return n > 0 && p[0]; }
  static VecPortable select(Mask m, VecPortable a, VecPortable b) { return m ? a : b; }
  static VecPortable max(VecPortable a, VecPortable b) { return {a.v > b.v ? a.v : b.v}; }
  static VecPortable exp(VecPortable a) { return {std::exp(a.v)}; }
  float sum() const { return v; }
  float hmax() const { return v; }
};

}  // namespace
}  // namespace gpt3d
#endif

namespace gpt3d {
namespace {

// Lane-wise arithmetic, the same for both definitions of VecPortable (`v` is a vector or one float).
inline VecPortable operator+(VecPortable a, VecPortable b) { return {a.v + b.v}; }
inline VecPortable operator-(VecPortable a, VecPortable b) { return {a.v - b.v}; }
inline VecPortable operator*(VecPortable a, VecPortable b) { return {a.v * b.v}; }
inline VecPortable operator/(VecPortable a, VecPortable b) { return {a.v / b.v}; }
inline VecPortable fmadd(VecPortable a, VecPortable b, VecPortable c) { return a * b + c; }  // no FMA in the baseline

}  // namespace
}  // namespace gpt3d
