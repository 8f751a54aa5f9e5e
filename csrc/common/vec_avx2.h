// 8 x fp32 AVX2+FMA vector with the interface of VecAvx512 (masked tails, fp32 <-> bf16). Include ONLY in a translation
// unit compiled for AVX2+FMA (see *_cpu_avx2.cpp: the target pragma comes before this include); callers check
// cpu_isa(). AVX2 has no masked 16-bit loads or stores, so a partial vector goes through an 8-lane stack buffer.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/bf16_round.h"

namespace gpt3d {
namespace {

struct VecAvx2 {
  static constexpr int kWidth = 8;
  static constexpr int kRegisters = 16;  // ymm0-15
  using Mask = __m256;  // all-ones lanes are selected
  __m256 v;

  static Mask first(int n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
  }
  static VecAvx2 zero() { return {_mm256_setzero_ps()}; }
  static VecAvx2 set1(float f) { return {_mm256_set1_ps(f)}; }

  static VecAvx2 load(const float* p, int n = kWidth) {
    return {n >= kWidth ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, _mm256_castps_si256(first(n)))};
  }
  static VecAvx2 widen_bf16(__m128i h) { return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))}; }
  static VecAvx2 load(const uint16_t* p, int n = kWidth) {
    if (n >= kWidth) return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    uint16_t buf[kWidth] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(buf, p, sizeof(uint16_t) * static_cast<size_t>(n > 0 ? n : 0));
    return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(buf)));
  }
  void store(float* p, int n = kWidth) const {
    if (n >= kWidth) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, _mm256_castps_si256(first(n)), v);
  }
  // fp32 bits rounded to nearest even at bit 16, the bf16 in the high half (common/bf16_round.h).
  template <bool kCheckNaN = true>
  static __m256i rounded_bf16_bits(__m256 v) {
    typedef uint32_t U __attribute__((vector_size(32)));
    return reinterpret_cast<__m256i>(gpt3d::rounded_bf16_bits<kCheckNaN, U>(v));
  }
  void store(uint16_t* p, int n = kWidth) const {
    const __m256i hi = _mm256_srli_epi32(rounded_bf16_bits(v), 16);  // 0..65535 per lane: packus keeps it exactly
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
    if (n >= kWidth) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    } else {
      uint16_t buf[kWidth];
      _mm_storeu_si128(reinterpret_cast<__m128i*>(buf), h);
      std::memcpy(p, buf, sizeof(uint16_t) * static_cast<size_t>(n > 0 ? n : 0));
    }
  }
  // As VecAvx512::load_bf16_pairs: 2 * kWidth bf16 values, even positions in `even`, odd in `odd`, no shuffle.
  static void load_bf16_pairs(const uint16_t* p, VecAvx2& even, VecAvx2& odd) {
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    asm("" : "+x"(w));  // one load, not one folded into each of the two instructions (see VecAvx512)
    even.v = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    odd.v = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(-65536)));
  }
  // The inverse of load_bf16_pairs, rounding as store(uint16_t*) does; kCheckNaN: common/bf16_round.h.
  template <bool kCheckNaN = true>
  static void store_bf16_pairs(uint16_t* p, VecAvx2 even, VecAvx2 odd) {
    // Odd words (the high halves) from odd, even words from even's high halves shifted down: one word blend.
    const __m256i low = _mm256_srli_epi32(rounded_bf16_bits<kCheckNaN>(even.v), 16);
    const __m256i pairs = _mm256_blend_epi16(low, rounded_bf16_bits<kCheckNaN>(odd.v), 0xAA);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), pairs);
  }
  // Lanes where the bool mask byte is true, restricted to the first n.
  static Mask load_mask(const bool* p, int n = kWidth) {
    __m128i bytes;
    if (n >= kWidth) {  // one 8-byte load: no library memcpy on the hot path
      bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    } else {
      uint64_t tail = 0;
      std::memcpy(&tail, p, static_cast<size_t>(n > 0 ? n : 0));
      bytes = _mm_cvtsi64_si128(static_cast<long long>(tail));
    }
    const __m256i wide = _mm256_cvtepu8_epi32(bytes);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(wide, _mm256_setzero_si256()));
  }
  static VecAvx2 select(Mask m, VecAvx2 a, VecAvx2 b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
  static VecAvx2 max(VecAvx2 a, VecAvx2 b) { return {_mm256_max_ps(a.v, b.v)}; }

  // e^x as VecAvx512::exp: x = n ln2 + r (n rounded to nearest by adding 1.5 * 2^23, whose low mantissa bits then
  // hold n), e^r by its degree-6 Taylor polynomial (< 2 ulp), times 2^n. When every lane's result is a normal float
  // (x > -86.5, the usual case) 2^n is added straight into p's exponent field; otherwise 2^n is applied as two
  // exponent-field factors 2^(n/2) * 2^(n - n/2), each a normal float, so results down to fp32's denormals match.
  // Exact 0 at or below -103.97 and for -inf (and NaN), so masked lanes contribute nothing.
  static VecAvx2 exp(VecAvx2 a) {
    // Dead lanes (masked keys, underflow) compute e^0 and are zeroed at the end: computing their 2^-150 would make
    // denormal products, which cost a microcode assist each (masked softmax rows would run 10x slower).
    const __m256 live = _mm256_cmp_ps(a.v, _mm256_set1_ps(-103.97f), _CMP_GT_OQ);
    const __m256 x = _mm256_and_ps(_mm256_min_ps(a.v, _mm256_set1_ps(88.7f)), live);
    const __m256 magic = _mm256_set1_ps(12582912.f);
    const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
    const __m256 n = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.f / 720.f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    const __m256i ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    __m256 e;
    if (_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-86.5f), _CMP_LT_OQ)) == 0) {
      e = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(ni, 23)));
    } else {
      const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
      const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
      const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
      e = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    }
    return {_mm256_and_ps(e, live)};
  }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  float hmax() const {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

// Free functions, not in-class friends: GCC does not apply a target pragma to friends defined in a class.
inline VecAvx2 operator+(VecAvx2 a, VecAvx2 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline VecAvx2 operator-(VecAvx2 a, VecAvx2 b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline VecAvx2 operator*(VecAvx2 a, VecAvx2 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline VecAvx2 operator/(VecAvx2 a, VecAvx2 b) { return {_mm256_div_ps(a.v, b.v)}; }
// a * b + c with one rounding, where a fused one is meant. GCC also fuses a * b + c written with the operators above
// (its C++ default is -ffp-contract=fast, whatever -std says), so where it does is up to the compiler.
inline VecAvx2 fmadd(VecAvx2 a, VecAvx2 b, VecAvx2 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }

}  // namespace
}  // namespace gpt3d
