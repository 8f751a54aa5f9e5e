// Cross-entropy row kernels compiled for AVX2+FMA; chosen at run time by cross_entropy_cpu.cpp.
#include "cross_entropy/cross_entropy_cpu.h"  // declarations only
#include "common/isa_avx2_names.h"
#define GPT3D_CPU_INSTANCE "cross_entropy/cross_entropy_cpu_instance.h"
#include "common/cpu_instance.h"
