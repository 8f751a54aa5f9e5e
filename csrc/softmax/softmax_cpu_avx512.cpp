// Softmax row kernels compiled for AVX-512 (16 fp32 lanes, masked tails); chosen at run time by softmax_cpu.cpp.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "softmax/softmax_cpu.h"  // declarations only
#include "common/isa_avx512_begin.h"

#if defined(GPT3D_AVX512)
#include "common/vec_avx512.h"
#include "softmax/softmax_cpu_rows.h"

namespace gpt3d {
namespace cpu_avx512 {

void softmax_forward_rows(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  softmax_forward_rows_dispatch<VecAvx512>(a, begin, end, scratch);
}

void softmax_backward_rows(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end) {
  softmax_backward_rows_dispatch<VecAvx512>(a, begin, end);
}

}  // namespace cpu_avx512
}  // namespace gpt3d
#include "common/isa_avx512_end.h"

#else  // not x86-64: never called (cpu_has_avx512() is false), defined so the extension links

namespace gpt3d {
namespace cpu_avx512 {
void softmax_forward_rows(const SoftmaxForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  cpu_portable::softmax_forward_rows(a, begin, end, scratch);
}
void softmax_backward_rows(const SoftmaxBackwardArgs& a, int64_t begin, int64_t end) {
  cpu_portable::softmax_backward_rows(a, begin, end);
}
}  // namespace cpu_avx512
}  // namespace gpt3d
#endif
