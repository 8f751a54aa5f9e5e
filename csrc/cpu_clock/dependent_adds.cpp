// gpt3d_C::dependent_adds(n) -> int: 8 n integer additions, each waiting for the one before. An add has one cycle of
// latency on every x86-64 and AArch64 core, so the time this takes is 8 n cycles: gpt3d/profiler/cpu_peak.py divides
// to measure the clock a busy core runs at (a VM's /proc/cpuinfo reports its nominal clock, not the boost it runs at).
// No tensor arguments, so it is registered for every backend.
#include <torch/extension.h>

#include <cstdint>

namespace gpt3d {
namespace {

int64_t dependent_adds(int64_t n) {
  TORCH_CHECK(n >= 0, "dependent_adds: n must be >= 0, got ", n);
  uint64_t x = 1;
  for (int64_t i = 0; i < n; ++i) {
#if defined(__x86_64__)
    asm volatile(".rept 8\n\tadd %0, %0\n\t.endr" : "+r"(x));
#elif defined(__aarch64__)
    asm volatile(".rept 8\n\tadd %0, %0, %0\n\t.endr" : "+r"(x));
#else
    TORCH_CHECK(false, "dependent_adds: no clock probe for this CPU architecture (x86-64 and AArch64 only)");
#endif
  }
  return static_cast<int64_t>(x);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) { m.def("dependent_adds(int n) -> int", &dependent_adds); }

}  // namespace gpt3d
