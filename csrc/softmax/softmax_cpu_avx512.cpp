// Softmax row kernels compiled for AVX-512; chosen at run time by softmax_cpu.cpp.
#include "softmax/softmax_cpu.h"  // declarations only
#include "common/isa_avx512_names.h"
#define GPT3D_CPU_INSTANCE "softmax/softmax_cpu_instance.h"
#include "common/cpu_instance.h"
