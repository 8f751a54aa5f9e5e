// LayerNorm row kernels compiled for AVX-512 (16 fp32 lanes, masked tails); chosen at run time by layer_norm_cpu.cpp.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "layer_norm/layer_norm_cpu.h"  // declarations only
#include "common/isa_avx512_begin.h"

#if defined(GPT3D_AVX512)
#include "common/vec_avx512.h"
#include "layer_norm/layer_norm_cpu_rows.h"

namespace gpt3d {
namespace cpu_avx512 {

void layer_norm_forward_rows(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  ln_forward_rows_dispatch<VecAvx512>(a, begin, end);
}

void layer_norm_backward_rows(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                              float* dbeta_acc) {
  ln_backward_rows_dispatch<VecAvx512>(a, begin, end, dgamma_acc, dbeta_acc);
}

}  // namespace cpu_avx512
}  // namespace gpt3d
#include "common/isa_avx512_end.h"

#else  // not x86-64: never called (cpu_has_avx512() is false), defined so the extension links

namespace gpt3d {
namespace cpu_avx512 {
void layer_norm_forward_rows(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  cpu_portable::layer_norm_forward_rows(a, begin, end);
}
void layer_norm_backward_rows(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                              float* dbeta_acc) {
  cpu_portable::layer_norm_backward_rows(a, begin, end, dgamma_acc, dbeta_acc);
}
}  // namespace cpu_avx512
}  // namespace gpt3d
#endif
