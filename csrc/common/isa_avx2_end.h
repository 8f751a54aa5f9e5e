// Closes isa_avx2_begin.h.
#if defined(GPT3D_AVX2)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
