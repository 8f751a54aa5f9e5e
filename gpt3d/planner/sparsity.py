"""Density of a block-sparse attention layer as the planner uses it: kept blocks / all blocks of the s x s square.

The layouts are gpt3d's own (gpt3d.sparse.layout.make_layout). A block-sparse kernel computes every kept block in
full (the diagonal ones masked), so its attention-core FLOPs, time and score memory are the dense full-square values
(the Megatron convention) times this fraction. A dense causal layer therefore has block density (nb + 1) / (2 nb)
but is counted as 1: dense kernels compute the whole square and mask it.
"""
from __future__ import annotations

import dataclasses
import functools

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.kernels.causal_attention import DEFAULT_BLOCK, block_probs_per_head


def layout_density(layout: SparseAttentionConfig, seq_len: int, n_heads: int = 1) -> float:
    """Kept blocks / (heads x (seq_len / block)^2) of the causal layout, averaged over heads."""
    if seq_len % layout.block != 0:
        raise ValueError(f"seq_len {seq_len} is not a multiple of the sparse block size {layout.block}")
    heads = n_heads if layout.different_layout_per_head else 1
    return _density(dataclasses.astuple(layout), seq_len, heads)


@functools.lru_cache(maxsize=256)
def _density(fields: tuple, seq_len: int, heads: int) -> float:
    from gpt3d.sparse.layout import make_layout
    layout = make_layout(SparseAttentionConfig(*fields), heads, seq_len)
    return float(layout.sum()) / layout.numel()


def mean_attention_density(kinds: list[str], layout: SparseAttentionConfig, seq_len: int, n_heads: int = 1) -> float:
    """Average over layers of the fraction of the full s x s attention square each layer computes (dense = 1)."""
    sparse = layout_density(layout, seq_len, n_heads) if "sparse" in kinds else 1.0
    return sum(1.0 if kind == "dense" else sparse for kind in kinds) / len(kinds)


def blocked_score_fraction(seq_len: int, block: int = DEFAULT_BLOCK) -> float:
    """The share of the s x s scores the blocked core computes and saves (query block i sees keys [0, end of
    block i))."""
    return block_probs_per_head(seq_len, block) / (seq_len * seq_len)


def materialized_score_fraction(model, seq_len: int) -> float:
    """Average over layers of the share of the s x s scores that is written to memory (softmax, dropout, saved for
    backward): 1 for a dense layer with the explicit softmax core (model.dense_attention = "softmax", Megatron's),
    the visible blocks' share for the blocked core, 0 with torch's fused attention ("sdpa", and "auto", which is sdpa
    on a GPU: flash/efficient kernels keep the scores on chip and save O(s) row statistics), the layout density for
    a block-sparse layer."""
    kinds = model.layer_attention_kinds()
    core = getattr(model, "dense_attention", "softmax")
    dense_share = {"softmax": 1.0, "blocked": blocked_score_fraction(seq_len)}.get(core, 0.0)
    sparse = layout_density(model.sparse, seq_len, model.n_heads) if "sparse" in kinds else 0.0
    return sum(dense_share if kind == "dense" else sparse for kind in kinds) / len(kinds)
