"""GPT building blocks (single-device view). Tensor parallelism swaps some of them by name (gpt3d/parallel/tensor.py);
every block reads its local sizes from its weights, so the same forward code runs sharded or whole.

Activations are [batch, seq, hidden]. The fused qkv projection stores its output rows per head, [heads, (q, k, v),
d_head] (Megatron's interleaved order), so a contiguous TP shard of the rows holds whole heads.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gpt3d.config.model import ModelConfig

from . import ops
from .cross_entropy import cross_entropy
from .linear import Linear, linear


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, impl: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps, self.impl)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + residual, norm(x + residual)), fused."""
        return ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps, self.impl)


class Dropout(nn.Module):
    """Dropout whose random stream is chosen by the parallel layer that owns it (see gpt3d/parallel/random.py):
    `rng_context` is set by tensor parallelism to draw from the TP-rank-specific stream where the tensor is sharded."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.rng_context: Optional[Callable] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        if self.rng_context is None:
            return F.dropout(x, self.p, training=True)
        with self.rng_context():
            return F.dropout(x, self.p, training=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, layout: Optional[torch.Tensor]):
        super().__init__()
        self.d_head = cfg.d_head
        self.kind = kind
        self.qkv = Linear(cfg.d_model, 3 * cfg.attn_width, cfg.bf16_matmul)
        self.proj = Linear(cfg.attn_width, cfg.d_model, cfg.bf16_matmul)
        self.attn_dropout = Dropout(cfg.attn_dropout)
        self.dense_core = cfg.dense_attention
        self.impl = cfg.kernels
        self.block = cfg.sparse.block
        # The block-sparse layout of all heads [heads, nb, nb]; TP keeps this rank's head slice.
        self.register_buffer("layout", layout, persistent=False)
        self._compiled: dict = {}
        self.recompute_core = False  # selective recomputation of the attention core (set by the parallel plan)
        self.rng_context: Optional[Callable] = None

    def compiled_layout(self, seq_len: int, device: torch.device):
        """The kernel's compact (CSR) form of this rank's heads' layout for `seq_len`, built once per length: the
        layout covers model.seq_len and a shorter sequence uses its top-left corner."""
        key = (seq_len, str(device))
        if key not in self._compiled:
            from gpt3d.kernels.sparse_attention import compile_layout
            blocks = seq_len // self.block
            self._compiled[key] = compile_layout(self.layout[:, :blocks, :blocks], self.block, device)
        return self._compiled[key]

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.kind == "sparse":
            if mask is not None:
                raise ValueError("packed examples need dense attention; set model.attention_pattern=dense")
            return ops.sparse_causal_attention(q, k, v, self.compiled_layout(q.shape[2], q.device), self.block,
                                               self.impl)
        dropout_p = self.attn_dropout.p if self.training else 0.0
        if dropout_p > 0 and self.attn_dropout.rng_context is not None:
            with self.attn_dropout.rng_context():
                return ops.dense_causal_attention(q, k, v, dropout_p, self.dense_core, self.impl, mask)
        return ops.dense_causal_attention(q, k, v, dropout_p, self.dense_core, self.impl, mask)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`mask`: [b, 1, s, s] attention mask of packed examples (None: plain causal)."""
        qkv = self.qkv(x)
        b, s, _ = qkv.shape
        heads = qkv.shape[-1] // (3 * self.d_head)  # local heads under tensor parallelism
        q, k, v = qkv.view(b, s, heads, 3, self.d_head).permute(3, 0, 2, 1, 4).unbind(0)
        if self.recompute_core and torch.is_grad_enabled():
            from gpt3d.parallel.recompute import checkpoint
            ctx = checkpoint(self.core, q, k, v, mask, rng_context=self.attn_dropout.rng_context)
        else:
            ctx = self.core(q, k, v, mask)
        ctx = ctx.transpose(1, 2).reshape(b, s, heads * self.d_head)
        return self.proj(ctx)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = Linear(cfg.d_model, cfg.d_ff, cfg.bf16_matmul)
        self.fc2 = Linear(cfg.d_ff, cfg.d_model, cfg.bf16_matmul)
        self.activation = cfg.activation
        self.impl = cfg.kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(ops.gelu(self.fc1(x), self.activation, self.impl))


class Block(nn.Module):
    """Pre-LN transformer block: x + drop(attn(ln1(x))), then + drop(mlp(ln2(.)))."""

    def __init__(self, cfg: ModelConfig, kind: str, layout: Optional[torch.Tensor]):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.layernorm_eps, cfg.kernels)
        self.attn = CausalSelfAttention(cfg, kind, layout)
        self.ln2 = LayerNorm(cfg.d_model, cfg.layernorm_eps, cfg.kernels)
        self.mlp = MLP(cfg)
        self.attn_out_dropout = Dropout(cfg.hidden_dropout)
        self.mlp_out_dropout = Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        attn_out = self.attn_out_dropout(self.attn(self.ln1(x), mask))
        x, normed = self.ln2.add_and_norm(attn_out, x)
        return x + self.mlp_out_dropout(self.mlp(normed))


class Embedding(nn.Module):
    """Token + learned position embeddings, then dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.dropout = Dropout(cfg.hidden_dropout)

    def lookup_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok(ids)

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return self.pos.weight[:seq_len]

    def forward(self, ids: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`positions` [b, s]: explicit position ids (packed examples restart at 0); default 0..s-1."""
        if ids.shape[1] > self.pos.weight.shape[0]:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the position table "
                             f"({self.pos.weight.shape[0]}); use shorter sequences or a larger model.seq_len")
        pos = self.positions(ids.shape[1], ids.device) if positions is None else F.embedding(positions,
                                                                                             self.pos.weight)
        return self.dropout(self.lookup_tokens(ids) + pos)


class PaddedVocabBias:
    """A constant bias of 0 for real and -inf for padded vocabulary rows, added by the head's GEMM where padded logits
    are returned (log-probabilities, entropy, inference): their softmax and gradients are exactly 0, and the weight
    gradient keeps its padded shape without a slice-and-pad copy. The training loss does without it (addmm first
    copies the bias into the whole output: one more pass over the logits) and reads only the real columns."""

    def __init__(self, rows: int, vocab_start: int, vocab_size: int):
        self.rows, self.vocab_start, self.vocab_size = rows, vocab_start, vocab_size
        self._cache: dict = {}

    @property
    def needed(self) -> bool:
        return self.vocab_start + self.rows > self.vocab_size

    def __call__(self, like: torch.Tensor):
        if not self.needed:
            return None
        key = (like.device, like.dtype)
        if key not in self._cache:
            ids = torch.arange(self.vocab_start, self.vocab_start + self.rows, device=like.device)
            zero = torch.zeros((), dtype=like.dtype, device=like.device)
            self._cache[key] = torch.where(ids < self.vocab_size, zero, float("-inf")).to(like.dtype)
        return self._cache[key]


class LMHead(nn.Module):
    """Logits against the (tied) embedding matrix, and the mean token cross-entropy. Holds its own weight only when
    untied or when it sits on another pipeline stage than the embedding (a tied copy, kept equal by gradient sync)."""

    def __init__(self, cfg: ModelConfig, own_weight: bool):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.weight = nn.Parameter(torch.empty(cfg.padded_vocab_size, cfg.d_model)) if own_weight else None
        self.pad_bias = PaddedVocabBias(cfg.padded_vocab_size, 0, cfg.vocab_size)
        self.bf16_matmul = cfg.bf16_matmul
        self.impl = cfg.kernels

    def project(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """hidden W^T (+ bias) in fp32: the head's one GEMM (gpt3d.parallel routes its weight gradient)."""
        return linear(hidden, weight, bias, self.bf16_matmul, keep_fp32=True)

    def padded_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Logits over the padded vocabulary, -inf in the padded columns."""
        # the bias is built in the activations' dtype
        return self.project(hidden, weight, self.pad_bias(hidden))

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.padded_logits(hidden, weight)[..., : self.vocab_size]

    def loss(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # no padding bias: the loss reads only the real vocabulary's columns (gpt3d/model/cross_entropy.py), in fp32
        logits = self.project(hidden, weight, None)
        return cross_entropy(logits.flatten(0, 1), labels.flatten(), self.vocab_size, self.impl)
