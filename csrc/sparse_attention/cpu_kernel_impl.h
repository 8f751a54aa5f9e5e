// CPU block-sparse causal attention (forward + backward), written once and compiled per instruction set.
//
// Include only from cpu_kernel_<isa>.cpp, after cpu_kernel_prelude.h, a `#pragma GCC target(...)`, and defining
// GPT3D_SA_NS (namespace of this instance) and GPT3D_SA_W (floats per SIMD vector: 16 avx512, 8 avx2, 4 sse2).
// Everything here lives in an anonymous namespace and uses no std:: templates, so no inline function compiled for a
// wide ISA can be picked by the linker for code that runs on a narrower CPU.
//
// Work is split into fp32 tiles copied from q/k/v (bf16 converted on load; head dim zero-padded to a multiple of 16)
// and small register-blocked GEMMs on them; the n x n score matrix never exists, only one block x block tile per thread.
#ifndef GPT3D_SA_NS
#error "define GPT3D_SA_NS and GPT3D_SA_W, then include cpu_kernel_impl.h (see cpu_kernel_avx512.cpp)"
#endif

namespace gpt3d_sparse {
namespace GPT3D_SA_NS {
namespace {

constexpr int W = GPT3D_SA_W;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
typedef float vf_unaligned __attribute__((vector_size(W * 4), aligned(4)));

inline vf vload(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void vstore(float* p, vf x) { *reinterpret_cast<vf_unaligned*>(p) = x; }
inline vf vbroadcast(float x) { return (vf){} + x; }

// Fused multiply-add through the intrinsic, where one is meant: GCC's own contraction of a * b + c (its C++ default,
// whatever -std says) happens where the compiler chooses.
inline vf vfma(vf a, vf b, vf c) {
#if GPT3D_SA_W == 16
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif GPT3D_SA_W == 8
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

inline float hsum(vf x) {
  float s = 0.f;
  for (int i = 0; i < W; ++i) s += x[i];
  return s;
}

inline float hmax(vf x) {
  float m = x[0];
  for (int i = 1; i < W; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// exp(x) for x <= ~0 (softmax arguments): Cephes range reduction + degree-6 polynomial, ~2 ulp.
// Arguments below -87 (including -inf from the causal mask) give exactly 0.
inline vf vexp(vf x) {
  const vf lo = vbroadcast(-87.0f), hi = vbroadcast(88.0f);
  const vi dead = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vbroadcast(1.9875691500e-4f);
  p = vfma(p, r, vbroadcast(1.3981999507e-3f));
  p = vfma(p, r, vbroadcast(8.3334519073e-3f));
  p = vfma(p, r, vbroadcast(4.1665795894e-2f));
  p = vfma(p, r, vbroadcast(1.6666665459e-1f));
  p = vfma(p, r, vbroadcast(5.0000001201e-1f));
  p = vfma(p, r * r, r + 1.0f);
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf y = p * (vf)e;
  return (vf)((vi)y & ~dead);
}

// C[MR x NR*W] (+)= A[MR x K] B[K x NR*W], row-major; the MR x NR accumulators stay in registers.
template <int MR, int NR>
inline void micro_gemm(int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool accumulate) {
  vf c[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NR; ++v) c[r][v] = accumulate ? vload(C + r * ldc + v * W) : (vf){};
  for (int k = 0; k < K; ++k) {
    vf b[NR];
#pragma GCC unroll 4
    for (int v = 0; v < NR; ++v) b[v] = vload(B + k * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vf a = vbroadcast(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NR; ++v) c[r][v] = vfma(a, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NR; ++v) vstore(C + r * ldc + v * W, c[r][v]);
}

// C[M x N] (+)= A[M x K] B[K x N]; M is a multiple of 8 and N of 16 (block sizes and the padded head dim).
inline void gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                 bool accumulate) {
  int j = 0;
  if (W == 16) {  // 32 zmm registers: 4 x 4 accumulators
    for (; j + 4 * W <= N; j += 4 * W)
      for (int i = 0; i < M; i += 4) micro_gemm<4, 4>(K, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, accumulate);
  }
  for (; j + 2 * W <= N; j += 2 * W)  // 16 registers (avx2 / sse): 4 x 2 accumulators
    for (int i = 0; i < M; i += 4) micro_gemm<4, 2>(K, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, accumulate);
  for (; j + W <= N; j += W)
    for (int i = 0; i < M; i += 8) micro_gemm<8, 1>(K, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, accumulate);
}

// Tile loads: rows x dim elements of T into fp32, head dim zero-padded to dp (padding must be 0, not garbage, as it
// enters the inner products).
template <typename T>
inline void load_rows(const T* src, int rows, int dim, int dp, float mul, float* dst) {
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < dim; ++d) dst[r * dp + d] = mul * load_as_float(src, (int64_t)r * dim + d);
    for (int d = dim; d < dp; ++d) dst[r * dp + d] = 0.f;
  }
}

template <typename T>
inline void load_rows_transposed(const T* src, int rows, int dim, int dp, float* dst) {  // dst [dp x rows]
  for (int r = 0; r < rows; ++r)
    for (int d = 0; d < dim; ++d) dst[d * rows + r] = load_as_float(src, (int64_t)r * dim + d);
  for (int d = dim; d < dp; ++d)
    for (int r = 0; r < rows; ++r) dst[d * rows + r] = 0.f;
}

inline void transpose(const float* src, int n, float* dst) {  // n x n
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < n; ++c) dst[c * n + r] = src[r * n + c];
}

inline void mask_future_keys(float* S, int n) {  // diagonal block: query row r sees key rows c <= r
  for (int r = 0; r < n; ++r)
    for (int c = r + 1; c < n; ++c) S[r * n + c] = -__builtin_inff();
}

inline int round_up16(int64_t x) { return (int)((x + 15) / 16 * 16); }

inline float* alloc_floats(int64_t n) { return static_cast<float*>(malloc(sizeof(float) * (n > 0 ? n : 1))); }

inline float scalar_exp(float x) { return expf(x); }
inline float scalar_log(float x) { return logf(x); }

template <typename T>
void forward_impl(const ForwardArgs& a) {
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* out = static_cast<T*>(a.out);
  const int B = (int)a.block, D = (int)a.dim, Dp = round_up16(a.dim);
  const int64_t nb = a.seq / B, tasks = a.batch * a.heads * nb;
#pragma omp parallel
  {
    float* Qs = alloc_floats((int64_t)4 * B * Dp + B * B + 2 * B);
    float* Kt = Qs + B * Dp;
    float* V = Kt + B * Dp;
    float* O = V + B * Dp;
    float* S = O + B * Dp;
    float* m = S + B * B;
    float* l = m + B;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t bh = t / nb, h = bh % a.heads;
      const int64_t i = nb - 1 - t % nb;  // later rows first: they tend to hold more key blocks (better balance)
      const int64_t row_off = (bh * a.seq + i * B) * D;
      load_rows(q + row_off, B, D, Dp, a.scale, Qs);
      for (int x = 0; x < B * Dp; ++x) O[x] = 0.f;
      for (int r = 0; r < B; ++r) { m[r] = -__builtin_inff(); l[r] = 0.f; }
      for (int32_t e = a.row_ptr[h * nb + i]; e < a.row_ptr[h * nb + i + 1]; ++e) {
        const int64_t j = a.col_idx[e];
        const int64_t key_off = (bh * a.seq + j * B) * D;
        load_rows_transposed(k + key_off, B, D, Dp, Kt);
        load_rows(v + key_off, B, D, Dp, 1.f, V);
        gemm(B, B, Dp, Qs, Dp, Kt, B, S, B, false);
        if (j == i) mask_future_keys(S, B);
        for (int r = 0; r < B; ++r) {
          float* Sr = S + r * B;
          vf mx = vload(Sr);
          for (int c = W; c < B; c += W) { const vf x = vload(Sr + c); mx = x > mx ? x : mx; }
          const RowRescale rs = online_softmax_rescale(m[r], hmax(mx), scalar_exp);
          vf sum = (vf){};
          for (int c = 0; c < B; c += W) {
            const vf p = vexp(vload(Sr + c) - rs.m_new);
            vstore(Sr + c, p);
            sum += p;
          }
          l[r] = l[r] * rs.alpha + hsum(sum);
          m[r] = rs.m_new;
          if (rs.alpha != 1.f)
            for (int d = 0; d < Dp; d += W) vstore(O + r * Dp + d, vload(O + r * Dp + d) * rs.alpha);
        }
        gemm(B, Dp, B, S, B, V, Dp, O, Dp, true);
      }
      for (int r = 0; r < B; ++r) {
        const float inv = 1.f / l[r];
        for (int d = 0; d < D; ++d) store_from_float(out, row_off + (int64_t)r * D + d, O[r * Dp + d] * inv);
        a.lse[bh * a.seq + i * B + r] = row_logsumexp(m[r], l[r], scalar_log);
      }
    }
    free(Qs);
  }
}

// Key-block-major backward, one (batch, head) per task: dK_j and dV_j accumulate in registers-then-tiles while the
// query blocks that see block j stream by; dQ accumulates in a per-task fp32 buffer, so no two threads write the same
// gradient and no atomics are needed.
template <typename T>
void backward_impl(const BackwardArgs& a) {
  const T* dout = static_cast<const T*>(a.dout);
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* out = static_cast<const T*>(a.out);
  T* dq = static_cast<T*>(a.dq);
  T* dk = static_cast<T*>(a.dk);
  T* dv = static_cast<T*>(a.dv);
  const int B = (int)a.block, D = (int)a.dim, Dp = round_up16(a.dim);
  const int64_t nb = a.seq / B, tasks = a.batch * a.heads;
#pragma omp parallel
  {
    const int64_t tile = (int64_t)B * Dp;
    float* K = alloc_floats(7 * tile + 4 * (int64_t)B * B + a.seq * (Dp + 1));
    float* Kt = K + tile;
    float* Vt = Kt + tile;
    float* dK = Vt + tile;
    float* dV = dK + tile;
    float* Qs = dV + tile;
    float* dO = Qs + tile;
    float* P = dO + tile;
    float* Pt = P + B * B;
    float* dP = Pt + B * B;
    float* dSt = dP + B * B;
    float* dQ = dSt + B * B;        // [seq x Dp]
    float* delta = dQ + a.seq * Dp;  // [seq]
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < tasks; ++bh) {
      const int64_t h = bh % a.heads, base = bh * a.seq * D;
      for (int64_t s = 0; s < a.seq; ++s) {
        float acc = 0.f;
        for (int d = 0; d < D; ++d) acc += load_as_float(dout, base + s * D + d) * load_as_float(out, base + s * D + d);
        delta[s] = acc;
      }
      for (int64_t x = 0; x < a.seq * Dp; ++x) dQ[x] = 0.f;
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t key_off = base + j * B * D;
        load_rows(k + key_off, B, D, Dp, 1.f, K);
        load_rows_transposed(k + key_off, B, D, Dp, Kt);
        load_rows_transposed(v + key_off, B, D, Dp, Vt);
        for (int64_t x = 0; x < tile; ++x) { dK[x] = 0.f; dV[x] = 0.f; }
        for (int32_t e = a.col_ptr[h * nb + j]; e < a.col_ptr[h * nb + j + 1]; ++e) {
          const int64_t i = a.row_idx[e];
          const int64_t row_off = base + i * B * D;
          const float* lse = a.lse + bh * a.seq + i * B;
          load_rows(q + row_off, B, D, Dp, a.scale, Qs);
          load_rows(dout + row_off, B, D, Dp, 1.f, dO);
          gemm(B, B, Dp, Qs, Dp, Kt, B, P, B, false);
          if (i == j) mask_future_keys(P, B);
          for (int r = 0; r < B; ++r)
            for (int c = 0; c < B; c += W) vstore(P + r * B + c, vexp(vload(P + r * B + c) - lse[r]));
          transpose(P, B, Pt);
          gemm(B, Dp, B, Pt, B, dO, Dp, dV, Dp, true);   // dV_j += P^T dO_i
          gemm(B, B, Dp, dO, Dp, Vt, B, dP, B, false);   // dP = dO_i V_j^T
          const float* dl = delta + i * B;
          for (int r = 0; r < B; ++r)                     // dS = P * (dP - delta), in place of dP
            for (int c = 0; c < B; c += W) {
              const vf p = vload(P + r * B + c);
              vstore(dP + r * B + c, p * (vload(dP + r * B + c) - dl[r]));
            }
          transpose(dP, B, dSt);
          gemm(B, Dp, B, dSt, B, Qs, Dp, dK, Dp, true);  // dK_j += dS^T (scale Q_i)
          gemm(B, Dp, B, dP, B, K, Dp, dQ + i * B * Dp, Dp, true);  // dQ_i += dS K_j (scale applied at the end)
        }
        for (int r = 0; r < B; ++r)
          for (int d = 0; d < D; ++d) {
            store_from_float(dk, key_off + (int64_t)r * D + d, dK[r * Dp + d]);
            store_from_float(dv, key_off + (int64_t)r * D + d, dV[r * Dp + d]);
          }
      }
      for (int64_t s = 0; s < a.seq; ++s)
        for (int d = 0; d < D; ++d) store_from_float(dq, base + s * D + d, a.scale * dQ[s * Dp + d]);
    }
    free(K);
  }
}

}  // namespace

void forward(const ForwardArgs& a) {
  if (a.is_bf16) forward_impl<uint16_t>(a);
  else forward_impl<float>(a);
}

void backward(const BackwardArgs& a) {
  if (a.is_bf16) backward_impl<uint16_t>(a);
  else backward_impl<float>(a);
}

}  // namespace GPT3D_SA_NS
}  // namespace gpt3d_sparse
