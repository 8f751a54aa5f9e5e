"""A pipeline stage's forward over new tokens with a KV cache. It calls the stage's own modules (whole or
tensor-parallel: they read their local sizes from their weights), so only the attention core differs from training:
scaled dot-product attention over the cached keys, under the cache's mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt3d.model import ops
from gpt3d.model.gpt import GPTStage
from gpt3d.parallel import comm

from .kv_cache import KVCache


def embed_tokens(stage: GPTStage, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token + position embeddings at explicit positions (padding: -1, embedded at 0 and never attended to). Under
    tensor parallelism each rank looks up its vocabulary rows and the partial sums are reduced."""
    embed = stage.embed
    weight = embed.tok.weight
    group = getattr(embed, "group", None)
    if group is None or group.size == 1:
        tokens = F.embedding(ids, weight)
    else:
        local = ids - embed.vocab_start
        outside = (local < 0) | (local >= weight.shape[0])
        tokens = F.embedding(local.masked_fill(outside, 0), weight).masked_fill(outside.unsqueeze(-1), 0.0)
        tokens = comm.reduce_from_tp(tokens, group)
    return tokens + embed.pos.weight[positions.clamp(min=0)]


# fp32: fewer rows than this go through the column-major weight (MKL is faster there), more through oneDNN's packed one
PACKED_FP32_MIN_ROWS = 4


def _linear(module, x: torch.Tensor) -> torch.Tensor:
    """module(x), or with a oneDNN-prepacked CPU weight (gpt3d/inference/loading.py) that GEMM."""
    packed = getattr(module, "packed_weight", None)
    if packed is None or (x.dtype == torch.float32 and x.numel() < PACKED_FP32_MIN_ROWS * x.shape[-1]):
        return module(x)
    return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    if getattr(mlp.fc1, "packed_weight", None) is None:
        return mlp(x)
    return _linear(mlp.fc2, ops.gelu(_linear(mlp.fc1, x), mlp.activation, mlp.impl))


def attention(attn, x: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
    qkv = _linear(attn.qkv, x)
    b, s, _ = qkv.shape
    heads = qkv.shape[-1] // (3 * attn.d_head)
    q, k, v = qkv.view(b, s, heads, 3, attn.d_head).permute(3, 0, 2, 1, 4).unbind(0)
    keys, values = cache.store(layer, k, v)
    mask = cache.mask(attn.layout if attn.kind == "sparse" else None, attn.block)
    if cache.attention_probs is not None:  # explicit probabilities, recorded for the induction-head diagnostics
        scores = torch.matmul(q.float(), keys.float().transpose(-1, -2)) * attn.d_head ** -0.5
        probs = torch.softmax(scores if mask is None else scores.masked_fill(~mask, float("-inf")), dim=-1)
        cache.attention_probs[layer] = probs
        ctx = torch.matmul(probs, values.float()).to(q.dtype)
    else:
        ctx = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return _linear(attn.proj, ctx.transpose(1, 2).reshape(b, s, heads * attn.d_head))


def _norm(ln, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, ln.weight.shape, ln.weight, ln.bias, ln.eps)  # no autograd op dispatch when decoding


def block_forward(block, x: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
    """Block.forward (pre-LN, no dropout at inference) with the cached attention."""
    x = x + attention(block.attn, _norm(block.ln1, x), cache, layer).to(x.dtype)
    return x + _mlp(block.mlp, _norm(block.ln2, x))


def local_logits(stage: GPTStage, hidden: torch.Tensor) -> torch.Tensor:
    """This rank's vocabulary shard of the logits (fp32; padded vocabulary columns are -inf)."""
    hidden = _norm(stage.final_ln, hidden)
    head = stage.head
    weight = stage.head_weight()
    return F.linear(hidden, weight, head.pad_bias(hidden)).float()


@torch.no_grad()
def stage_forward(stage: GPTStage, inputs: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                  last_only: bool = True) -> torch.Tensor:
    """inputs: token ids [b, new] on the first stage, else hidden states [b, new, d]. Returns hidden states, or on
    the last stage the local logits of the last position [b, V/tp] (`last_only`) or of every position."""
    cache.begin(positions)
    hidden = embed_tokens(stage, inputs, positions) if stage.first else inputs
    for layer, block in stage.blocks.items():
        hidden = block_forward(block, hidden, cache, int(layer))
    cache.commit()
    if not stage.last:
        return hidden
    return local_logits(stage, hidden[:, -1] if last_only else hidden)
