// Cross-entropy row kernels for any CPU (the compiler's vector extension; see vec_portable.h).
#include "common/vec_portable.h"
#include "cross_entropy/cross_entropy_cpu.h"

#define GPT3D_CPU_NS cpu_portable
#define GPT3D_CPU_VEC VecPortable
#include "cross_entropy/cross_entropy_cpu_instance.h"
