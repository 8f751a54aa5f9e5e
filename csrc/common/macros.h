// Qualifiers that let one function body serve the CPU kernels and the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define GPT3D_HD __host__ __device__ __forceinline__
#else
#define GPT3D_HD inline
#endif
