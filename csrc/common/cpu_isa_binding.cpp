// gpt3d_C::cpu_isa() -> "avx512" | "avx2" | "portable": which CPU code path the kernels take now (the widest this CPU
// has, or GPT3D_CPU_ISA), reported by the benchmarks and checked by the tests. No tensor arguments, so it is
// registered for every backend.
#include <torch/extension.h>

#include <string>

#include "common/cpu_features.h"

namespace gpt3d {
namespace {
std::string current_cpu_isa() { return cpu_isa_name(); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) { m.def("cpu_isa() -> str", &current_cpu_isa); }

}  // namespace gpt3d
