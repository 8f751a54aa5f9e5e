// 16 x fp32 AVX-512 vector with masked tails and fp32 <-> bf16 conversion. Include ONLY in a translation unit compiled
// for AVX-512 (see *_cpu_avx512.cpp: the target pragma comes before this include); callers check cpu_isa().
#pragma once
#include <immintrin.h>

#include <cstdint>


namespace gpt3d {
namespace {

struct VecAvx512 {
  static constexpr int kWidth = 16;
  static constexpr int kRegisters = 32;  // zmm0-31: how many vectors a loop can keep live
  using Mask = __mmask16;
  __m512 v;

  static Mask first(int n) { return n >= kWidth ? Mask(0xffff) : Mask((1u << n) - 1u); }
  static VecAvx512 zero() { return {_mm512_setzero_ps()}; }
  static VecAvx512 set1(float f) { return {_mm512_set1_ps(f)}; }

  static VecAvx512 load(const float* p, int n = kWidth) {
    return {n >= kWidth ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first(n), p)};
  }
  static VecAvx512 load(const uint16_t* p, int n = kWidth) {
    __m256i h = n >= kWidth ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                            : _mm256_maskz_loadu_epi16(first(n), p);
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  void store(float* p, int n = kWidth) const {
    if (n >= kWidth) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, first(n), v);
  }
  // fp32 bits rounded to nearest even at bit 16, the bf16 in the high half, as common/bf16_round.h computes them.
  // Bit 16 (the bf16's last bit) picks the lanes that add one more through a mask: three instructions where the
  // shift, and and two adds of the generic form are four.
  template <bool kCheckNaN = true>
  static __m512i rounded_bf16_bits(__m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __mmask16 odd = _mm512_test_epi32_mask(bits, _mm512_set1_epi32(0x10000));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff));
    rounded = _mm512_mask_add_epi32(rounded, odd, rounded, _mm512_set1_epi32(1));
    if constexpr (!kCheckNaN) return rounded;
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);  // quieted, payload kept
    return _mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x00400000));
  }
  void store(uint16_t* p, int n = kWidth) const {
    // The high half of every lane, gathered into the low 256 bits by one word permute (a shift and a narrowing
    // vpmovdw cost three uops on the two 512-bit ALU ports; the permute one).
    const __m512i high_words = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                                31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    __m256i h = _mm512_castsi512_si256(_mm512_permutexvar_epi16(high_words, rounded_bf16_bits(v)));
    if (n >= kWidth) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    else _mm256_mask_storeu_epi16(p, first(n), h);
  }
  // 2 * kWidth bf16 values widened without a shuffle: `even` holds the elements at even positions, `odd` those at odd
  // positions (a 32-bit lane holds one pair, whose odd element already is its high half). For passes that do not
  // depend on the order of a row's elements, or whose other operands are laid out in the same order.
  static void load_bf16_pairs(const uint16_t* p, VecAvx512& even, VecAvx512& odd) {
    __m512i w = _mm512_loadu_si512(p);
    // Keeps w in a register: GCC otherwise folds the load into both the shift and the and, two loads where one does
    // (and loads, one 512-bit load a cycle on AMD EPYC, bound these passes).
    asm("" : "+v"(w));
    even.v = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    odd.v = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(-65536)));
  }
  // The inverse of load_bf16_pairs, rounding as store(uint16_t*) does (kCheckNaN: common/bf16_round.h).
  template <bool kCheckNaN = true>
  static void store_bf16_pairs(uint16_t* p, VecAvx512 even, VecAvx512 odd) {
    const __m512i low = _mm512_srli_epi32(rounded_bf16_bits<kCheckNaN>(even.v), 16);
    // odd's high halves where the mask is set, low elsewhere (ternary-logic table 0xE4: C ? A : B)
    const __m512i high = rounded_bf16_bits<kCheckNaN>(odd.v);
    _mm512_storeu_si512(p, _mm512_ternarylogic_epi32(high, low, _mm512_set1_epi32(-65536), 0xE4));
  }
  static Mask load_mask(const bool* p, int n = kWidth) {
    __m128i b = n >= kWidth ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(first(n), p);
    return _mm_test_epi8_mask(b, b);
  }
  static VecAvx512 select(Mask m, VecAvx512 a, VecAvx512 b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
  static VecAvx512 max(VecAvx512 a, VecAvx512 b) { return {_mm512_max_ps(a.v, b.v)}; }

  // e^x: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (< 2 ulp), 2^n by scalef.
  // Exact 0 below -103.97 (where fp32 underflows anyway) and for -inf, so masked lanes contribute nothing.
  static VecAvx512 exp(VecAvx512 a) {
    const __m512 x = _mm512_min_ps(_mm512_max_ps(a.v, _mm512_set1_ps(-104.f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.f / 720.f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    const __mmask16 live = _mm512_cmp_ps_mask(a.v, _mm512_set1_ps(-103.97f), _CMP_GT_OQ);
    return {_mm512_maskz_scalef_ps(live, p, n)};
  }
  float sum() const { return _mm512_reduce_add_ps(v); }
  float hmax() const { return _mm512_reduce_max_ps(v); }
};

// Free functions, not in-class friends: GCC does not apply a target pragma to friends defined in a class.
inline VecAvx512 operator+(VecAvx512 a, VecAvx512 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VecAvx512 operator-(VecAvx512 a, VecAvx512 b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline VecAvx512 operator*(VecAvx512 a, VecAvx512 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline VecAvx512 operator/(VecAvx512 a, VecAvx512 b) { return {_mm512_div_ps(a.v, b.v)}; }
// a * b + c with one rounding, where a fused one is meant. GCC also fuses a * b + c written with the operators above
// (its C++ default is -ffp-contract=fast, whatever -std says), so where it does is up to the compiler.
inline VecAvx512 fmadd(VecAvx512 a, VecAvx512 b, VecAvx512 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }

}  // namespace
}  // namespace gpt3d
