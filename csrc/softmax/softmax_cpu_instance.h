// Defines the row-kernel entry points of softmax_cpu.h in namespace GPT3D_CPU_NS over the vector type GPT3D_CPU_VEC.
// Included once by each per-instruction-set file (softmax_cpu_{avx512,avx2,portable}.cpp) after its vector header.
#include "softmax/softmax_cpu_rows.h"

namespace gpt3d {
namespace GPT3D_CPU_NS {

void softmax_forward_rows(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  softmax_forward_rows_dispatch<GPT3D_CPU_VEC>(a, begin, end, scratch);
}

void softmax_backward_rows(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end) {
  softmax_backward_rows_dispatch<GPT3D_CPU_VEC>(a, begin, end);
}

}  // namespace GPT3D_CPU_NS
}  // namespace gpt3d
