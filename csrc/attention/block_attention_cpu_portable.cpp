// Blocked causal attention for any CPU (softmax rows one lane wide; the GEMMs are BLAS's on every path).
#include "common/vec_portable.h"
#include "attention/block_attention_cpu.h"

#define GPT3D_CPU_NS cpu_portable
#define GPT3D_CPU_VEC VecPortable
#include "attention/block_attention_cpu_instance.h"
