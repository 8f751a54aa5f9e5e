// Runtime choice of the CPU code path: the AVX-512 and AVX2+FMA kernels run only where the CPU (and OS) support them,
// so one build works on every x86-64 machine (no -march=native baked in).
// GPT3D_CPU_ISA (auto | avx512 | avx2 | portable; "generic" = portable) forces a path. It is read on every kernel
// call, so the tests cover every path this machine can run by setting it; naming a path the CPU lacks is an error.
#pragma once
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace gpt3d {

enum class CpuIsa { kPortable, kAvx2, kAvx512 };

inline bool cpu_supports(CpuIsa isa) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  // Each flag list is what the matching translation units are compiled for (isa_avx512_begin.h, isa_avx2_begin.h).
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("fma");
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == CpuIsa::kAvx512) return avx512;
  if (isa == CpuIsa::kAvx2) return avx2;
  return true;
#else
  return isa == CpuIsa::kPortable;
#endif
}

// The widest path this CPU supports, or the one GPT3D_CPU_ISA names. Throws std::runtime_error (a Python
// RuntimeError through torch) for an unknown name or a path this CPU lacks.
inline CpuIsa cpu_isa() {
  const char* env = std::getenv("GPT3D_CPU_ISA");
  const std::string want = env != nullptr ? env : "";
  if (want.empty() || want == "auto") {
    if (cpu_supports(CpuIsa::kAvx512)) return CpuIsa::kAvx512;
    if (cpu_supports(CpuIsa::kAvx2)) return CpuIsa::kAvx2;
    return CpuIsa::kPortable;
  }
  CpuIsa isa;
  if (want == "avx512") isa = CpuIsa::kAvx512;
  else if (want == "avx2") isa = CpuIsa::kAvx2;
  else if (want == "portable" || want == "generic") isa = CpuIsa::kPortable;
  else throw std::runtime_error("GPT3D_CPU_ISA=" + want + " is unknown; use auto, avx512, avx2, portable or generic");
  if (!cpu_supports(isa))
    throw std::runtime_error("GPT3D_CPU_ISA=" + want + " but this CPU lacks that instruction set; unset GPT3D_CPU_ISA");
  return isa;
}

// Whether the CPU is AMD's (GCC's and Clang's vendor check; false off x86).
inline bool cpu_vendor_is_amd() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
#else
  return false;
#endif
}

// Name of the code path the CPU kernels take now.
inline const char* cpu_isa_name() {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

// Picks the row kernel of the current path: one call per kernel launch, before the OpenMP region.
template <class Fn>
Fn pick_for_isa(Fn avx512, Fn avx2, Fn portable) {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return avx512;
    case CpuIsa::kAvx2: return avx2;
    default: return portable;
  }
}

}  // namespace gpt3d
