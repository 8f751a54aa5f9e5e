// GELU span kernels for any CPU (one lane or the compiler's vector extension; see vec_portable.h).
#include "common/vec_portable.h"
#include "gelu/gelu_cpu.h"

#define GPT3D_CPU_NS cpu_portable
#define GPT3D_CPU_VEC VecPortable
#include "gelu/gelu_cpu_instance.h"
