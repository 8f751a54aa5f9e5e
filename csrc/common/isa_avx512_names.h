// What common/cpu_instance.h needs to compile an op's row kernels for AVX-512 (16 fp32 lanes, masked tails).
#include "common/gcc_avx512_diagnostics.h"

#define GPT3D_CPU_NS cpu_avx512
#define GPT3D_ISA_BEGIN "common/isa_avx512_begin.h"
#define GPT3D_ISA_VEC_HEADER "common/vec_avx512.h"
#define GPT3D_ISA_VEC VecAvx512
