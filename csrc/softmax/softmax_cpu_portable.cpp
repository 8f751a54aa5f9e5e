// Softmax row kernels for any CPU (one lane).
#include "common/vec_portable.h"
#include "softmax/softmax_cpu_rows.h"

namespace gpt3d {
namespace cpu_portable {

void softmax_forward_rows(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  softmax_forward_rows_dispatch<VecPortable>(a, begin, end, scratch);
}

void softmax_backward_rows(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end) {
  softmax_backward_rows_dispatch<VecPortable>(a, begin, end);
}

}  // namespace cpu_portable
}  // namespace gpt3d
