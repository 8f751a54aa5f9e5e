// The BLAS single-precision GEMM torch links on CPU (MKL in the x86 wheels, OpenBLAS elsewhere), reached through its
// Fortran symbol. Declared weak: on a torch built without BLAS the symbol is absent, has_blas_sgemm() says so, and
// the callers keep their torch-only path, instead of the whole extension failing to load.
#pragma once

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace gpt3d {

inline bool has_blas_sgemm() { return sgemm_ != nullptr; }

// Column-major C[m x n] = alpha op(A) op(B) + beta C, with op = transpose where the flag says 'T'. The callers run
// it inside their own OpenMP region over independent work, one call per thread (MKL does not nest its threads there).
inline void blas_sgemm(char transa, char transb, int m, int n, int k, float alpha, const float* a, int lda,
                       const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&transa, &transb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

}  // namespace gpt3d
