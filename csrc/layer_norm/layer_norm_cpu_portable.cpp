// LayerNorm row kernels for any CPU (one lane; the compiler may still auto-vectorise).
#include "common/vec_portable.h"
#include "layer_norm/layer_norm_cpu.h"

#define GPT3D_CPU_NS cpu_portable
#define GPT3D_CPU_VEC VecPortable
#include "layer_norm/layer_norm_cpu_instance.h"
