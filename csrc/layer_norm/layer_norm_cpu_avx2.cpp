// LayerNorm row kernels compiled for AVX2+FMA (8 fp32 lanes, masked tails); chosen at run time by layer_norm_cpu.cpp.
// System headers come before the target pragma so no library function is compiled for a wider instruction set.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#include "layer_norm/layer_norm_cpu.h"  // declarations only
#include "common/isa_avx2_begin.h"

#define GPT3D_CPU_NS cpu_avx2
#if defined(GPT3D_AVX2)
#include "common/vec_avx2.h"
#define GPT3D_CPU_VEC VecAvx2
#include "layer_norm/layer_norm_cpu_instance.h"
#include "common/isa_avx2_end.h"
#else  // not x86-64: never chosen (cpu_isa() is portable there), compiled portable so the extension links
#include "common/vec_portable.h"
#define GPT3D_CPU_VEC VecPortable
#include "layer_norm/layer_norm_cpu_instance.h"
#endif
