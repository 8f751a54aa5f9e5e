// Blocked causal attention CPU entry points: OpenMP over (batch, head) pairs (each head's K, V and block scores stay
// in the thread's cache), softmax rows by the CPU's instruction set.
#include "attention/block_attention_cpu.h"

#include <memory>

#include "common/cpu_features.h"

namespace gpt3d {

void block_attention_forward_cpu(const BlockAttentionForwardArgs& a) {
  auto heads_fn = pick_for_isa(cpu_avx512::block_attention_forward_heads, cpu_avx2::block_attention_forward_heads,
                               cpu_portable::block_attention_forward_heads);
  const int64_t heads = a.batch * a.heads;
#pragma omp parallel if (heads > 1)
  {
    std::unique_ptr<float[]> scratch(new float[a.s]);
#pragma omp for schedule(static)
    for (int64_t head = 0; head < heads; ++head) heads_fn(a, head, head + 1, scratch.get());
  }
}

void block_attention_backward_cpu(const BlockAttentionBackwardArgs& a) {
  auto heads_fn = pick_for_isa(cpu_avx512::block_attention_backward_heads, cpu_avx2::block_attention_backward_heads,
                               cpu_portable::block_attention_backward_heads);
  const int64_t heads = a.batch * a.heads;
#pragma omp parallel if (heads > 1)
  {
    std::unique_ptr<float[]> dp(new float[a.block * a.s]);
#pragma omp for schedule(static)
    for (int64_t head = 0; head < heads; ++head) heads_fn(a, head, head + 1, dp.get());
  }
}

}  // namespace gpt3d
