// Defines the row-kernel entry points of layer_norm_cpu.h in namespace GPT3D_CPU_NS over the vector type GPT3D_CPU_VEC.
// Included once by each per-instruction-set file (layer_norm_cpu_{avx512,avx2,portable}.cpp) after its vector header.
#include "layer_norm/layer_norm_cpu_rows.h"

namespace gpt3d {
namespace GPT3D_CPU_NS {

void layer_norm_forward_rows(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  ln_forward_rows_dispatch<GPT3D_CPU_VEC>(a, begin, end);
}

void layer_norm_backward_rows(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                              float* dbeta_acc) {
  ln_backward_rows_dispatch<GPT3D_CPU_VEC>(a, begin, end, dgamma_acc, dbeta_acc);
}

}  // namespace GPT3D_CPU_NS
}  // namespace gpt3d
