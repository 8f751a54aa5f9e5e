// Closes isa_avx512_begin.h / isa_avx2_begin.h (nothing to close where they compiled to nothing).
#if defined(GPT3D_ISA_ACTIVE)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
