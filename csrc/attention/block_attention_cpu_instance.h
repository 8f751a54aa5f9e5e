// Defines the per-head entry points of block_attention_cpu.h in namespace GPT3D_CPU_NS over GPT3D_CPU_VEC.
#include "attention/block_attention_cpu_heads.h"

namespace gpt3d {
namespace GPT3D_CPU_NS {

void block_attention_forward_heads(const BlockAttentionForwardArgs& a, int64_t begin, int64_t end, float* scratch) {
  for (int64_t head = begin; head < end; ++head) block_attention_forward_head<GPT3D_CPU_VEC>(a, head, scratch);
}

void block_attention_backward_heads(const BlockAttentionBackwardArgs& a, int64_t begin, int64_t end, float* dp) {
  for (int64_t head = begin; head < end; ++head) block_attention_backward_head<GPT3D_CPU_VEC>(a, head, dp);
}

}  // namespace GPT3D_CPU_NS
}  // namespace gpt3d
