// Blocked causal attention's softmax rows compiled for AVX2+FMA; chosen at run time by block_attention_cpu.cpp.
#include "attention/block_attention_cpu.h"  // declarations only
#include "common/isa_avx2_names.h"
#define GPT3D_CPU_INSTANCE "attention/block_attention_cpu_instance.h"
#include "common/cpu_instance.h"
