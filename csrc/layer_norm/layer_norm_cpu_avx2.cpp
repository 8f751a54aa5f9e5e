// LayerNorm row kernels compiled for AVX2+FMA; chosen at run time by layer_norm_cpu.cpp.
#include "layer_norm/layer_norm_cpu.h"  // declarations only
#include "common/isa_avx2_names.h"
#define GPT3D_CPU_INSTANCE "layer_norm/layer_norm_cpu_instance.h"
#include "common/cpu_instance.h"
