// LayerNorm row kernels for any CPU (one lane; the compiler may still auto-vectorise).
#include "common/vec_portable.h"
#include "layer_norm/layer_norm_cpu_rows.h"

namespace gpt3d {
namespace cpu_portable {

void layer_norm_forward_rows(const LayerNormForwardArgs& a, int64_t begin, int64_t end) {
  ln_forward_rows_dispatch<VecPortable>(a, begin, end);
}

void layer_norm_backward_rows(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* dgamma_acc,
                              float* dbeta_acc) {
  ln_backward_rows_dispatch<VecPortable>(a, begin, end, dgamma_acc, dbeta_acc);
}

}  // namespace cpu_portable
}  // namespace gpt3d
