"""Analytical FLOPs of the GPT model: one formula shared by the training log, the profiler and the planner.

Conventions (Megatron-LM's, so numbers compare with published ones):
- A multiply-add is 2 FLOPs; only GEMMs are counted (LayerNorm, softmax, GELU, dropout are memory-bound and ignored).
- The attention core (scores q k^T and context p v) is counted over the full s x s square even though attention is
  causal: the kernels Megatron counts compute the whole square and mask it, and Megatron's formula counts it that way.
- Backward = 2 x forward (gradient w.r.t. the input and w.r.t. the weight, each a GEMM of the forward's size).
- The embedding lookup is a gather: 0 GEMM FLOPs. The output head (logits) is a GEMM over the padded vocabulary.
- Recomputation adds forward FLOPs: `selective` re-runs the attention core, `full` re-runs the whole layer forward.
  The head is never recomputed.
- A block-sparse attention layer computes only the blocks of its layout: its core FLOPs are the dense core FLOPs times
  the layout density (non-zero blocks / all blocks of the s x s square).

With d_ff = 4 d and attn_width = d, dense attention and no recomputation, `model_training_flops` equals
`megatron_model_flops` exactly; with recompute="full" it equals Megatron's eq. (3) (the 96 B s l h^2 formula).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from gpt3d.config.model import ModelConfig

FLOPS_PER_MULTIPLY_ADD = 2.0
"""A fused multiply-add counts as two floating-point operations."""

BACKWARD_TO_FORWARD_RATIO = 2.0
"""Backward of a GEMM = one GEMM for the input gradient + one for the weight gradient, each the forward's size."""

RecomputeMode = Literal["none", "selective", "full"]
RECOMPUTE_MODES: tuple[str, ...] = ("none", "selective", "full")


def megatron_model_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """Model FLOPs of one forward + backward over `batch` sequences (no recomputation), Megatron-LM's formula:
    72 * B * s * l * h^2 * (1 + s / (6 h) + V / (12 l h)), with V the padded vocabulary (the head GEMM's width)."""
    b, s, l, h, v = batch, seq_len, cfg.n_layers, cfg.d_model, cfg.padded_vocab_size
    return 72.0 * b * s * l * h * h * (1.0 + s / (6.0 * h) + v / (12.0 * l * h))


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one transformer layer over `batch` sequences of `seq_len` tokens, per GEMM."""

    qkv: float
    """x [bs, d] @ W_qkv [d, 3 a]: 2 * b * s * d * 3a."""
    attention_core: float
    """scores q k^T and context p v: 2 * (2 * b * s^2 * a), times the layout density for block-sparse layers."""
    out_proj: float
    """context [bs, a] @ W_o [a, d]: 2 * b * s * a * d."""
    fc1: float
    """[bs, d] @ [d, d_ff]: 2 * b * s * d * d_ff."""
    fc2: float
    """[bs, d_ff] @ [d_ff, d]: 2 * b * s * d_ff * d."""

    @property
    def total(self) -> float:
        return self.qkv + self.attention_core + self.out_proj + self.fc1 + self.fc2


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"attention density must be in (0, 1] (non-zero blocks / all blocks), got {density}")


def layer_forward_flops(cfg: ModelConfig, batch: int, seq_len: int, attention_density: float = 1.0) -> LayerFlops:
    """Forward FLOPs of one layer; `attention_density` < 1 for a block-sparse layer (fraction of s x s computed)."""
    _check_density(attention_density)
    b, s, d, a, f = batch, seq_len, cfg.d_model, cfg.attn_width, cfg.d_ff
    mac = FLOPS_PER_MULTIPLY_ADD
    return LayerFlops(
        qkv=mac * b * s * d * 3 * a,
        attention_core=mac * 2 * b * s * s * a * attention_density,
        out_proj=mac * b * s * a * d,
        fc1=mac * b * s * d * f,
        fc2=mac * b * s * f * d,
    )


def embedding_forward_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """The token and position embeddings are lookups (gathers) plus an add: no GEMM FLOPs."""
    return 0.0


def head_forward_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """Logits = hidden [bs, d] @ embedding^T [d, V_padded]."""
    return FLOPS_PER_MULTIPLY_ADD * batch * seq_len * cfg.d_model * cfg.padded_vocab_size


def recompute_forward_flops(layer: LayerFlops, recompute: str) -> float:
    """Extra forward FLOPs that recomputation adds to the backward of one layer."""
    if recompute == "none":
        return 0.0
    if recompute == "selective":
        return layer.attention_core
    if recompute == "full":
        return layer.total
    raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")


def layer_training_flops(cfg: ModelConfig, batch: int, seq_len: int, recompute: str = "none",
                         attention_density: float = 1.0) -> float:
    """Forward + backward (+ recomputed forward) FLOPs of one layer for one step over `batch` sequences."""
    fwd = layer_forward_flops(cfg, batch, seq_len, attention_density)
    return fwd.total * (1.0 + BACKWARD_TO_FORWARD_RATIO) + recompute_forward_flops(fwd, recompute)


def layer_densities(cfg: ModelConfig, sparse_density: Optional[float]) -> list[float]:
    """Attention density of every layer: 1 for dense layers, `sparse_density` for block-sparse ones."""
    kinds = cfg.layer_attention_kinds()
    if "sparse" in kinds and sparse_density is None:
        raise ValueError(f"model.attention_pattern={cfg.attention_pattern!r} has block-sparse layers: pass "
                         f"sparse_density (e.g. gpt3d.planner.sparsity.layout_density(cfg.sparse, seq_len))")
    return [1.0 if kind == "dense" else float(sparse_density) for kind in kinds]


def model_training_flops(cfg: ModelConfig, batch: int, seq_len: int, recompute: str = "none",
                         sparse_density: Optional[float] = None) -> float:
    """FLOPs of one forward + backward (+ recomputation) of the whole model over `batch` sequences: every layer
    (sparse layers at `sparse_density`) plus the head (forward + backward, never recomputed)."""
    counts: dict[float, int] = {}
    for density in layer_densities(cfg, sparse_density):
        counts[density] = counts.get(density, 0) + 1
    layers = sum(n * layer_training_flops(cfg, batch, seq_len, recompute, density) for density, n in counts.items())
    head = head_forward_flops(cfg, batch, seq_len) * (1.0 + BACKWARD_TO_FORWARD_RATIO)
    return layers + head + embedding_forward_flops(cfg, batch, seq_len)
