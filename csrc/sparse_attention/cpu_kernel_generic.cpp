// Baseline instance of the CPU kernels (x86-64 SSE2 / any other CPU): the fallback of the run-time dispatch.
#include "sparse_attention/cpu_kernel_prelude.h"

#define GPT3D_SA_NS isa_generic
#define GPT3D_SA_W 4
#include "sparse_attention/cpu_kernel_impl.h"
