// AVX-512 instance of the CPU kernels (picked at run time when the CPU reports avx512f).
#include "common/gcc_avx512_diagnostics.h"
#include "sparse_attention/cpu_kernel_prelude.h"

#define GPT3D_SA_NS isa_avx512
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#endif
#define GPT3D_SA_W 16
#else  // other architectures: this instance is the portable code (the dispatcher never prefers it)
#define GPT3D_SA_W 4
#endif
#include "sparse_attention/cpu_kernel_impl.h"
#if defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma clang attribute pop
#endif
