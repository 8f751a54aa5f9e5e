// Blocked causal attention ops (CPU, float32): schemas and the CPU implementation.
//   gpt3d_C::block_causal_attention_fwd(q, k, v [b, h, s, d], scale, block) -> (out [b, h, s, d], probs)
//   gpt3d_C::block_causal_attention_bwd(dout, q, k, v, probs, scale, block) -> (dq, dk, dv)
//   gpt3d_C::block_causal_attention_has_blas() -> bool   (false: the torch build has no BLAS GEMM to call)
// q, k, v and dout are read in place wherever their last dimension is contiguous (the model passes strided views of
// its QKV projection output); out is a [b, h, s, d] view of [b, s, h, d] memory, the layout the output projection
// reads. probs is [b * h, block_probs_per_head(s, block)] (block_attention_args.h). Autograd and the choice of this
// op over torch's batched GEMMs are in Python (gpt3d/kernels/causal_attention.py).
#include <torch/extension.h>

#include <climits>

#include "attention/block_attention_cpu.h"
#include "common/blas.h"
#include "common/torch_checks.h"

namespace gpt3d {
namespace {

void check_heads(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " has dtype ", t.scalar_type(),
              " but this kernel takes float32; call gpt3d.kernels.block_causal_attention, which runs torch's "
              "batched GEMMs for other dtypes");
  check_kernel_device(op, t, c10::DeviceType::CPU);
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be [batch, heads, seq, head_dim], got shape ", shape_str(t));
  check_same_shape(op, name, t, q, "q");
}

// The BLAS takes 32-bit sizes: the keys a block sees (up to seq), head_dim, and the leading dimensions (rows_contiguous
// bounds the inputs'; the output's is heads x head_dim).
void check_call(const char* op, const at::Tensor& q, int64_t block) {
  TORCH_CHECK(has_blas_sgemm(), op, ": this torch build has no BLAS sgemm to call; use "
              "model.dense_attention=sdpa (gpt3d.kernels.block_causal_attention falls back to torch's GEMMs)");
  TORCH_CHECK(block >= 1, op, ": block must be at least 1, got ", block);
  TORCH_CHECK(q.size(2) <= INT_MAX && q.size(1) * q.size(3) <= INT_MAX, op, ": seq ", q.size(2),
              " or heads x head_dim ", q.size(1), " x ", q.size(3), " exceeds the BLAS's 32-bit sizes");
}

// t itself where its rows are contiguous and its row stride fits the BLAS's 32-bit leading dimension, else a copy.
at::Tensor rows_contiguous(const at::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(2) >= std::max<int64_t>(t.size(3), 1) && t.stride(2) <= INT_MAX;
  return ok ? t : t.contiguous();
}

template <class T>
HeadMatrices<T> heads_of(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

std::tuple<at::Tensor, at::Tensor> block_causal_attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                  const at::Tensor& v_in, double scale,
                                                                  int64_t block) {
  const char* op = "gpt3d_C::block_causal_attention_fwd";
  for (auto [name, t] : {std::pair{"q", &q_in}, {"k", &k_in}, {"v", &v_in}}) check_heads(op, name, *t, q_in);
  check_call(op, q_in, block);
  const at::Tensor q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  const int64_t batch = q.size(0), heads = q.size(1), s = q.size(2), d = q.size(3);
  at::Tensor out = at::empty({batch, s, heads, d}, q.options()).transpose(1, 2);
  at::Tensor probs = at::empty({batch * heads, block_probs_per_head(s, block)}, q.options());
  if (q.numel() > 0)
    block_attention_forward_cpu({heads_of<const float>(q), heads_of<const float>(k), heads_of<const float>(v),
                                 heads_of<float>(out), probs.data_ptr<float>(), batch, heads, s, d, block,
                                 static_cast<float>(scale)});
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_causal_attention_bwd_cpu(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& probs_in, double scale, int64_t block) {
  const char* op = "gpt3d_C::block_causal_attention_bwd";
  for (auto [name, t] : {std::pair{"dout", &dout_in}, {"q", &q_in}, {"k", &k_in}, {"v", &v_in}})
    check_heads(op, name, *t, q_in);
  check_call(op, q_in, block);
  const int64_t batch = q_in.size(0), heads = q_in.size(1), s = q_in.size(2), d = q_in.size(3);
  const int64_t per_head = block_probs_per_head(s, block);
  TORCH_CHECK(probs_in.scalar_type() == at::kFloat && probs_in.dim() == 2 && probs_in.size(0) == batch * heads &&
                  probs_in.size(1) == per_head,
              op, ": probs has shape ", shape_str(probs_in), " and dtype ", probs_in.scalar_type(), " but must be the "
              "forward's float32 [", batch * heads, ", ", per_head, "] for seq ", s, " and block ", block);
  check_kernel_device(op, probs_in, c10::DeviceType::CPU);
  const at::Tensor dout = rows_contiguous(dout_in), q = rows_contiguous(q_in), k = rows_contiguous(k_in),
                   v = rows_contiguous(v_in), probs = probs_in.contiguous();
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options()),
             dv = at::empty(q.sizes(), q.options());
  if (q.numel() > 0)
    block_attention_backward_cpu({heads_of<const float>(q), heads_of<const float>(k), heads_of<const float>(v),
                                  heads_of<const float>(dout), probs.data_ptr<float>(), heads_of<float>(dq),
                                  heads_of<float>(dk), heads_of<float>(dv), batch, heads, s, d, block,
                                  static_cast<float>(scale)});
  return {dq, dk, dv};
}

bool block_causal_attention_has_blas() { return has_blas_sgemm(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("block_causal_attention_fwd(Tensor q, Tensor k, Tensor v, float scale, int block) -> (Tensor, Tensor)");
  m.def("block_causal_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor probs, float scale, "
        "int block) -> (Tensor, Tensor, Tensor)");
  m.def("block_causal_attention_has_blas() -> bool");
}

TORCH_LIBRARY_IMPL(gpt3d_C, CPU, m) {
  m.impl("block_causal_attention_fwd", &block_causal_attention_fwd_cpu);
  m.impl("block_causal_attention_bwd", &block_causal_attention_bwd_cpu);
}

TORCH_LIBRARY_IMPL(gpt3d_C, CatchAll, m) {
  m.impl("block_causal_attention_has_blas", &block_causal_attention_has_blas);
}

}  // namespace gpt3d
