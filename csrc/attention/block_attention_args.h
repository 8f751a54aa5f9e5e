// Torch-free arguments of the blocked causal attention kernels (CPU, fp32).
#pragma once
#include <cstdint>

namespace gpt3d {

// A [batch, heads, s, d] fp32 tensor whose rows (the d values of one position) are contiguous: head (b, h) is an
// [s, d] matrix at data + b * stride_b + h * stride_h with row stride stride_s, which the BLAS takes as its leading
// dimension. So q, k and v can be the strided views of one QKV projection output, read without copies.
template <class T>
struct HeadMatrices {
  T* data;
  int64_t stride_b, stride_h, stride_s;
  T* head(int64_t b, int64_t h) const { return data + b * stride_b + h * stride_h; }
};

// One head's queries are cut into blocks of `block` rows; block [start, end) sees keys [0, end). Its probabilities
// are stored as [end - start, end] rows, the blocks of one head one after another (block_probs_per_head floats);
// head (b, h) is row b * heads + h of probs.
struct BlockAttentionForwardArgs {
  HeadMatrices<const float> q, k, v;
  HeadMatrices<float> out;
  float* probs;  // [batch * heads, block_probs_per_head(s, block)]
  int64_t batch, heads, s, d, block;
  float scale;
};

struct BlockAttentionBackwardArgs {
  HeadMatrices<const float> q, k, v, dout;
  const float* probs;  // the forward's
  HeadMatrices<float> dq, dk, dv;
  int64_t batch, heads, s, d, block;
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
