// Runtime choice of the CPU code path: the AVX-512 kernels run only where the CPU (and OS) support them, so one build
// works on every x86-64 machine (no -march=native baked in).
// GPT3D_CPU_ISA=portable forces the portable path (used by the tests to cover it on an AVX-512 machine).
#pragma once
#include <cstdlib>
#include <cstring>

namespace gpt3d {

inline bool cpu_has_avx512() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool has = [] {
    const char* forced = std::getenv("GPT3D_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }();
  return has;
#else
  return false;
#endif
}

// Name of the code path the CPU kernels take on this machine.
inline const char* cpu_isa_name() { return cpu_has_avx512() ? "avx512" : "portable"; }

}  // namespace gpt3d
