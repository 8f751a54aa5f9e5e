// Include at the top of an AVX-512 translation unit, after the system headers and BEFORE any gpt3d header: every
// function defined below is compiled for AVX-512 (the file's callers check cpu_isa().first). gpt3d headers keep
// their functions in anonymous namespaces, so these AVX-512 copies never replace the portable ones at link time.
// On a non-x86 target GPT3D_AVX512 stays undefined and the file compiles to nothing useful (never called).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GPT3D_AVX512 1
#define GPT3D_ISA_ACTIVE 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#endif
#endif
