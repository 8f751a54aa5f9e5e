// Defines the span entry points of gelu_cpu.h in namespace GPT3D_CPU_NS over the vector type GPT3D_CPU_VEC.
// Included once by each per-instruction-set file (gelu_cpu_{avx512,avx2,portable}.cpp) after its vector header.
#include "gelu/gelu_cpu_spans.h"

namespace gpt3d {
namespace GPT3D_CPU_NS {

void gelu_forward_span(const GeluArgs& a, int64_t begin, int64_t end) {
  gelu_forward_span_dispatch<GPT3D_CPU_VEC>(a, begin, end);
}

void gelu_backward_span(const GeluArgs& a, int64_t begin, int64_t end) {
  gelu_backward_span_dispatch<GPT3D_CPU_VEC>(a, begin, end);
}

}  // namespace GPT3D_CPU_NS
}  // namespace gpt3d
