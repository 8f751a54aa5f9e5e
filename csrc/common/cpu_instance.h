// Compiles one op's row kernels (the header GPT3D_CPU_INSTANCE, which defines the entry points in namespace
// GPT3D_CPU_NS over the vector type GPT3D_CPU_VEC) for the instruction set named by the including file's
// common/isa_<isa>_names.h. System headers come before the target pragma so no library function is compiled for a
// wider instruction set than the CPU may have. On a target without that instruction set the instance is compiled
// portable so the extension links (cpu_isa() never picks it there).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>

#include GPT3D_ISA_BEGIN
#if defined(GPT3D_ISA_ACTIVE)
#include GPT3D_ISA_VEC_HEADER
#define GPT3D_CPU_VEC GPT3D_ISA_VEC
#else
#include "common/vec_portable.h"
#define GPT3D_CPU_VEC VecPortable
#endif
#include GPT3D_CPU_INSTANCE
#include "common/isa_end.h"
