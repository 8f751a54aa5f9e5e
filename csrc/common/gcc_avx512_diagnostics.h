// Include first in an AVX-512 translation unit, before <immintrin.h>. GCC 12's AVX-512 intrinsics build their
// results from _mm512_undefined_*(), a variable initialised with itself, and -Wmaybe-uninitialized reports it at every
// inlined use (hundreds of warnings that point into the compiler's own header, none into ours). Silenced for these
// files only; every other file keeps the warning.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
