// Closes isa_avx512_begin.h.
#if defined(GPT3D_AVX512)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
