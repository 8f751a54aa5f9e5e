// Schema of the block-sparse attention ops and their CPU implementation (run-time choice of the SIMD instance).
#include <torch/extension.h>

#include <cstdlib>
#include <string>

#include "common/cpu_features.h"
#include "sparse_attention/checks.h"
#include "sparse_attention/cpu_kernels.h"

namespace gpt3d_sparse {
namespace {

// The instance of the current CPU path (gpt3d::cpu_isa(): the widest the CPU has, or GPT3D_CPU_ISA; read on every
// call so tests can check every instance on one machine). This op's name for "portable" is "generic".
std::string isa_name() {
  switch (gpt3d::cpu_isa()) {
    case gpt3d::CpuIsa::kAvx512: return "avx512";
    case gpt3d::CpuIsa::kAvx2: return "avx2";
    default: return "generic";
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                               const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t block,
                                               double scale) {
  check_qkv(q_in, k_in, v_in, block);
  const int64_t nb = q_in.size(2) / block;
  check_compressed_layout(row_ptr, col_idx, q_in.size(1), nb, /*lower=*/true, "row (CSR) layout");
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous();
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  ForwardArgs a{q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(),
                rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>(), q.size(0), q.size(1), q.size(2), q.size(3), block,
                static_cast<float>(scale), q.scalar_type() == at::kBFloat16};
  switch (gpt3d::cpu_isa()) {
    case gpt3d::CpuIsa::kAvx512: isa_avx512::forward(a); break;
    case gpt3d::CpuIsa::kAvx2: isa_avx2::forward(a); break;
    default: isa_generic::forward(a);
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& /*row_ptr*/, const at::Tensor& /*col_idx*/,
    const at::Tensor& col_ptr, const at::Tensor& row_idx, int64_t block, double scale) {
  // The CPU backward walks key-block columns only (CSC); the row form is for the CUDA dQ kernel.
  check_qkv(q_in, k_in, v_in, block);
  TORCH_CHECK(dout_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "sparse attention backward: grad_out and out must have q's shape ", q_in.sizes());
  TORCH_CHECK(dout_in.scalar_type() == q_in.scalar_type() && out_in.scalar_type() == q_in.scalar_type(),
              "sparse attention backward: grad_out and out must have q's dtype ", q_in.scalar_type());
  TORCH_CHECK(lse_in.scalar_type() == at::kFloat && lse_in.dim() == 3 && lse_in.size(0) == q_in.size(0) &&
                  lse_in.size(1) == q_in.size(1) && lse_in.size(2) == q_in.size(2),
              "sparse attention backward: lse must be float32 [batch, heads, seq] from the forward");
  const int64_t nb = q_in.size(2) / block;
  check_compressed_layout(col_ptr, row_idx, q_in.size(1), nb, /*lower=*/false, "column (CSC) layout");
  const at::Tensor dout = dout_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor out = out_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor cp = col_ptr.contiguous(), ri = row_idx.contiguous();
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  BackwardArgs a{dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(),
                 dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), cp.data_ptr<int32_t>(), ri.data_ptr<int32_t>(),
                 q.size(0), q.size(1), q.size(2), q.size(3), block, static_cast<float>(scale),
                 q.scalar_type() == at::kBFloat16};
  switch (gpt3d::cpu_isa()) {
    case gpt3d::CpuIsa::kAvx512: isa_avx512::backward(a); break;
    case gpt3d::CpuIsa::kAvx2: isa_avx2::backward(a); break;
    default: isa_generic::backward(a);
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace gpt3d_sparse

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("sparse_attention_forward(Tensor q, Tensor k, Tensor v, Tensor row_ptr, Tensor col_idx, int block, "
        "float scale) -> (Tensor out, Tensor lse)");
  m.def("sparse_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor row_ptr, Tensor col_idx, Tensor col_ptr, Tensor row_idx, int block, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  m.def("sparse_attention_cpu_isa() -> str", &gpt3d_sparse::isa_name);
}

TORCH_LIBRARY_IMPL(gpt3d_C, CPU, m) {
  m.impl("sparse_attention_forward", &gpt3d_sparse::forward_cpu);
  m.impl("sparse_attention_backward", &gpt3d_sparse::backward_cpu);
}
