// System headers of the per-ISA CPU kernel files. They must be included BEFORE the `#pragma GCC target(...)` of
// those files so that no library inline function gets compiled for a wider instruction set than the CPU may have.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "sparse_attention/block_math.h"
#include "sparse_attention/cpu_kernels.h"
