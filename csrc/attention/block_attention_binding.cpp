// Blocked causal attention ops (CPU, float32): schemas and the CPU implementation.
//   gpt3d_C::block_causal_attention_fwd(q, k, v [heads, s, d], scale, block) -> (out [heads, s, d], probs)
//   gpt3d_C::block_causal_attention_bwd(dout, q, k, v, probs, scale, block) -> (dq, dk, dv)
//   gpt3d_C::block_causal_attention_has_blas() -> bool   (false: the torch build has no BLAS GEMM to call)
// probs is [heads, block_probs_per_head(s, block)] (block_attention_args.h). Autograd and the choice of this op over
// torch's batched GEMMs are in Python (gpt3d/kernels/causal_attention.py).
#include <torch/extension.h>

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
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must be [heads, seq, head_dim], got shape ", shape_str(t));
  check_same_shape(op, name, t, q, "q");
}

void check_call(const char* op, const at::Tensor& q, int64_t block) {
  TORCH_CHECK(has_blas_sgemm(), op, ": this torch build has no BLAS sgemm to call; use "
              "model.dense_attention=sdpa (gpt3d.kernels.block_causal_attention falls back to torch's GEMMs)");
  TORCH_CHECK(block >= 1, op, ": block must be at least 1, got ", block);
  TORCH_CHECK(q.size(1) <= INT32_MAX / std::max<int64_t>(q.size(2), 1), op, ": seq x head_dim ", q.size(1), " x ",
              q.size(2), " exceeds the BLAS's 32-bit sizes");
}

std::tuple<at::Tensor, at::Tensor> block_causal_attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                  const at::Tensor& v_in, double scale,
                                                                  int64_t block) {
  const char* op = "gpt3d_C::block_causal_attention_fwd";
  for (auto [name, t] : {std::pair{"q", &q_in}, {"k", &k_in}, {"v", &v_in}}) check_heads(op, name, *t, q_in);
  check_call(op, q_in, block);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t heads = q.size(0), s = q.size(1), d = q.size(2);
  at::Tensor out = at::empty_like(q), probs = at::empty({heads, block_probs_per_head(s, block)}, q.options());
  if (q.numel() > 0)
    block_attention_forward_cpu({q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                                 out.data_ptr<float>(), probs.data_ptr<float>(), heads, s, d, block,
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
  const int64_t heads = q_in.size(0), s = q_in.size(1), d = q_in.size(2);
  TORCH_CHECK(probs_in.scalar_type() == at::kFloat && probs_in.dim() == 2 && probs_in.size(0) == heads &&
                  probs_in.size(1) == block_probs_per_head(s, block),
              op, ": probs has shape ", shape_str(probs_in), " and dtype ", probs_in.scalar_type(), " but must be the "
              "forward's float32 [", heads, ", ", block_probs_per_head(s, block), "] for seq ", s, " and block ",
              block);
  check_kernel_device(op, probs_in, c10::DeviceType::CPU);
  const at::Tensor dout = dout_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous(),
                   v = v_in.contiguous(), probs = probs_in.contiguous();
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (q.numel() > 0)
    block_attention_backward_cpu({q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                                  dout.data_ptr<float>(), probs.data_ptr<float>(), dq.data_ptr<float>(),
                                  dk.data_ptr<float>(), dv.data_ptr<float>(), heads, s, d, block,
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

TORCH_LIBRARY_IMPL(gpt3d_C, CatchAll, m) { m.impl("block_causal_attention_has_blas", &block_causal_attention_has_blas); }

}  // namespace gpt3d
