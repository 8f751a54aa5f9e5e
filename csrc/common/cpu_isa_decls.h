// Declares an op's per-instruction-set entry points once for every path: the same declarations in namespaces
// cpu_portable, cpu_avx512 and cpu_avx2, each defined by that path's translation unit (common/cpu_instance.h) and
// chosen at run time by pick_for_isa (common/cpu_features.h).
#pragma once

#define GPT3D_DECLARE_FOR_EACH_CPU_ISA(...) \
  namespace cpu_portable {                  \
  __VA_ARGS__                               \
  }                                         \
  namespace cpu_avx512 {                    \
  __VA_ARGS__                               \
  }                                         \
  namespace cpu_avx2 {                      \
  __VA_ARGS__                               \
  }
