// GELU span kernels compiled for AVX-512; chosen at run time by gelu_cpu.cpp.
#include "gelu/gelu_cpu.h"  // declarations only
#include "common/isa_avx512_names.h"
#define GPT3D_CPU_INSTANCE "gelu/gelu_cpu_instance.h"
#include "common/cpu_instance.h"
