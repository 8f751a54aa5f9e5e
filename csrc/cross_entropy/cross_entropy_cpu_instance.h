// Defines the row-kernel entry points of cross_entropy_cpu.h in namespace GPT3D_CPU_NS over the vector type
// GPT3D_CPU_VEC. Included once by each per-instruction-set file (cross_entropy_cpu_{avx512,avx2,portable}.cpp).
#include "cross_entropy/cross_entropy_cpu_rows.h"

namespace gpt3d {
namespace GPT3D_CPU_NS {

void logsumexp_rows(const LogSumExpArgs& a, int64_t begin, int64_t end) {
  logsumexp_rows_dispatch<GPT3D_CPU_VEC>(a, begin, end);
}

void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t begin, int64_t end) {
  cross_entropy_backward_rows_dispatch<GPT3D_CPU_VEC>(a, begin, end);
}

}  // namespace GPT3D_CPU_NS
}  // namespace gpt3d
