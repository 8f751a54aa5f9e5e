"""Model architecture config: GPT-1/2/3 (pre-LN, learned positions, GELU, tied embeddings)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from .base import field, require
from .sparse import SparseAttentionConfig


@dataclass
class ModelConfig:
    n_layers: int = field(doc="number of transformer blocks")
    d_model: int = field(doc="hidden size")
    n_heads: int = field(doc="attention heads")
    d_head: Optional[int] = field(None, doc="width of one head; default d_model / n_heads")
    d_ff: Optional[int] = field(None, doc="MLP inner width; default 4 * d_model")
    seq_len: int = field(1024, doc="context length = size of the learned position table")
    vocab_size: int = field(50257, doc="tokenizer vocabulary size (GPT-2 BPE: 50257)")
    vocab_pad_multiple: int = field(
        128, doc="the embedding is padded to a multiple of this, independent of the layout (128 -> 50304); every "
                 "TP degree dividing the padded size works; padded logits are masked out of the loss")
    activation: Literal["gelu_tanh", "gelu"] = field(
        "gelu_tanh", doc="gelu_tanh = GPT-2's tanh approximation (HF 'gelu_new'); gelu = exact erf GELU (Megatron)")
    layernorm_eps: float = field(1e-5, doc="LayerNorm epsilon")
    init_std: float = field(0.02, doc="std of the normal init; residual projections use init_std / sqrt(2 n_layers)")
    hidden_dropout: float = field(0.0, doc="dropout on embeddings and residual branches")
    attn_dropout: float = field(0.0, doc="dropout on attention probabilities")
    tie_embeddings: bool = field(True, doc="output head shares the token embedding (GPT-2/3)")
    task_heads: dict[str, int] = field(
        default_factory=dict, doc="extra linear heads on the final hidden state, name -> output width (set by "
                                  "train.objective: classify, reward); saved and converted like any other tensor")
    attention_pattern: Literal["dense", "alternating", "sparse"] = field(
        "dense", doc="dense everywhere; alternating = GPT-3 (even layers dense, odd layers block-sparse); sparse = all")
    sparse: SparseAttentionConfig = field(default_factory=SparseAttentionConfig, doc="block-sparse layout")
    dense_attention: Literal["auto", "sdpa", "softmax", "blocked"] = field(
        "auto", doc="dense attention core: sdpa = torch's fused attention; softmax = explicit scores + gpt3d's fused "
                    "scaled causal softmax (or its reference when kernels: reference), Megatron's formulation; "
                    "blocked = the same explicit scores computed and saved only for the key blocks each query block "
                    "sees (no attention dropout); auto = blocked on a CPU for fp32 sequences up to 1024 (512 without "
                    "gradients), and bf16 ones up to 1024 where torch's bf16 GEMM is fast (model.bf16_matmul), "
                    "with the fused softmax and without attention dropout or packing (faster there), sdpa "
                    "otherwise and on every GPU (gpt3d/model/ops.py)")
    bf16_matmul: Literal["auto", "bf16", "fp32"] = field(
        "auto", doc="bf16 linear layers on a CPU: bf16 = torch's bf16 GEMM; fp32 = the same product as an fp32 GEMM "
                    "rounded once to bf16 (faster on Intel CPUs without AMX); auto = bf16 with AMX-BF16, or with "
                    "AVX512-BF16 on a non-Intel CPU (AMD Zen 4/5), else fp32 (gpt3d/model/linear.py). Other dtypes "
                    "and GPUs are unaffected")
    kernels: Literal["auto", "fused", "reference"] = field(
        "auto", doc="auto = each fused csrc/ kernel only where it beats PyTorch eager on this CPU path (a per-ISA table, "
                    "gpt3d/kernels/_select.py), else PyTorch; fused = csrc/ kernels when built (falls back to reference "
                    "with a warning); reference = PyTorch")

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "seq_len", "vocab_size", "vocab_pad_multiple"):
            require(getattr(self, name) > 0, f"model.{name}", f"must be positive, got {getattr(self, name)}")
        if self.d_head is None:
            require(self.d_model % self.n_heads == 0, "model.n_heads",
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model}; pick a divisor or set model.d_head")
            self.d_head = self.d_model // self.n_heads
        require(self.d_head > 0, "model.d_head", f"must be positive, got {self.d_head}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        require(self.d_ff > 0, "model.d_ff", f"must be positive, got {self.d_ff}")
        for name in ("hidden_dropout", "attn_dropout"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"model.{name}", f"must be in [0, 1), got {value}")
        require(not (self.dense_attention == "blocked" and self.attn_dropout > 0), "model.dense_attention",
                f"blocked never materialises the whole probability matrix that attention dropout "
                f"(model.attn_dropout={self.attn_dropout}) masks; use dense_attention=softmax or attn_dropout=0")
        require(self.layernorm_eps > 0, "model.layernorm_eps", "must be positive")
        require(self.init_std > 0, "model.init_std", "must be positive")
        if self.attention_pattern != "dense":
            self.sparse.check_seq_len(self.seq_len, "model.seq_len")
        for name, width in self.task_heads.items():
            require(isinstance(name, str) and name.isidentifier(), "model.task_heads",
                    f"head name {name!r} must be an identifier")
            require(isinstance(width, int) and not isinstance(width, bool) and width >= 1,
                    f"model.task_heads.{name}", f"output width must be a positive integer, got {width!r}")

    @property
    def attn_width(self) -> int:
        """n_heads * d_head: the width of q, k, v (equals d_model unless d_head was set explicitly)."""
        return self.n_heads * self.d_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return int(math.ceil(self.vocab_size / m) * m)

    def layer_attention_kinds(self) -> list[str]:
        """'dense' or 'sparse' for every layer (GPT-3's alternating pattern: even layers dense, odd sparse)."""
        if self.attention_pattern == "dense":
            return ["dense"] * self.n_layers
        if self.attention_pattern == "sparse":
            return ["sparse"] * self.n_layers
        return ["dense" if i % 2 == 0 else "sparse" for i in range(self.n_layers)]

    def num_parameters(self, padded_vocab: bool = False) -> int:
        """Exact parameter count of the model gpt3d builds (tied head counted once)."""
        d, a, f = self.d_model, self.attn_width, self.d_ff
        vocab = self.padded_vocab_size if padded_vocab else self.vocab_size
        per_layer = (
            2 * 2 * d                # two LayerNorms (weight + bias)
            + d * 3 * a + 3 * a      # fused qkv
            + a * d + d              # attention output projection
            + d * f + f + f * d + d  # MLP
        )
        embeddings = vocab * d + self.seq_len * d
        head = 0 if self.tie_embeddings else vocab * d
        task_heads = sum(width * (d + 1) for width in self.task_heads.values())
        return embeddings + self.n_layers * per_layer + 2 * d + head + task_heads
