// Softmax row kernels for any CPU (one lane; the compiler may still auto-vectorise).
#include "common/vec_portable.h"
#include "softmax/softmax_cpu.h"

#define GPT3D_CPU_NS cpu_portable
#define GPT3D_CPU_VEC VecPortable
#include "softmax/softmax_cpu_instance.h"
