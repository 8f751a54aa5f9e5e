// Entry points of the CPU block-sparse attention kernels, compiled once per instruction set
// (cpu_kernel_avx512.cpp, cpu_kernel_avx2.cpp, cpu_kernel_generic.cpp) and picked at run time.
#pragma once

#include <stdint.h>

namespace gpt3d_sparse {

// Tensors are contiguous [batch, heads, seq, dim]; q/k/v/out/dq/dk/dv are float or bf16 bits (uint16) per `is_bf16`;
// lse and the CSR arrays as described in block_math.h.
struct ForwardArgs {
  const void* q; const void* k; const void* v;
  void* out; float* lse;
  const int32_t* row_ptr; const int32_t* col_idx;
  int64_t batch, heads, seq, dim, block;
  float scale;
  bool is_bf16;
};

struct BackwardArgs {
  const void* dout; const void* q; const void* k; const void* v; const void* out; const float* lse;
  void* dq; void* dk; void* dv;
  const int32_t* col_ptr; const int32_t* row_idx;  // CSC: for every key block, the query blocks that see it
  int64_t batch, heads, seq, dim, block;
  float scale;
  bool is_bf16;
};

// Largest head dim the CPU tiles hold (per-thread scratch is sized from it).
constexpr int64_t kMaxHeadDim = 256;

#define GPT3D_SPARSE_DECLARE_ISA(ns)               \
  namespace ns {                                   \
  void forward(const ForwardArgs& a);              \
  void backward(const BackwardArgs& a);            \
  }
GPT3D_SPARSE_DECLARE_ISA(isa_avx512)
GPT3D_SPARSE_DECLARE_ISA(isa_avx2)
GPT3D_SPARSE_DECLARE_ISA(isa_generic)
#undef GPT3D_SPARSE_DECLARE_ISA

}  // namespace gpt3d_sparse
