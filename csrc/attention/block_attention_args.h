// Torch-free arguments of the blocked causal attention kernels (CPU, fp32).
#pragma once
#include <cstdint>

namespace gpt3d {

// One head's queries are cut into blocks of `block` rows; block [start, end) sees keys [0, end). Its probabilities
// are stored as [end - start, end] rows, the blocks of one head one after another (block_probs_per_head floats).
struct BlockAttentionForwardArgs {
  const float *q, *k, *v;  // [heads, s, d] contiguous (heads = batch x heads)
  float* out;              // [heads, s, d]
  float* probs;            // [heads, block_probs_per_head(s, block)]
  int64_t heads, s, d, block;
  float scale;
};

struct BlockAttentionBackwardArgs {
  const float *q, *k, *v, *dout, *probs;  // as the forward's, dout [heads, s, d]
  float *dq, *dk, *dv;                    // [heads, s, d]
  int64_t heads, s, d, block;
  float scale;
};

// Floats of one head's stored probabilities: sum over blocks of rows x visible keys.
inline int64_t block_probs_per_head(int64_t s, int64_t block) {
  int64_t total = 0;
  for (int64_t start = 0; start < s; start += block) {
    const int64_t end = start + block < s ? start + block : s;
    total += (end - start) * end;
  }
  return total;
}

}  // namespace gpt3d
