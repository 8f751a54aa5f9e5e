// What common/cpu_instance.h needs to compile an op's row kernels for AVX2+FMA (8 fp32 lanes, masked tails).
#define GPT3D_CPU_NS cpu_avx2
#define GPT3D_ISA_BEGIN "common/isa_avx2_begin.h"
#define GPT3D_ISA_VEC_HEADER "common/vec_avx2.h"
#define GPT3D_ISA_VEC VecAvx2
