"""Activation memory saved for backward, per transformer layer and micro-batch, on one tensor-parallel rank.

From Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", section 4: with
16-bit activations, 1-byte dropout masks, h = d_model, a = n_heads, one layer saves 34 s b h + 5 a s^2 b bytes:

  replicated across TP ranks unless sequence parallel (10 s b h): LayerNorm inputs 2 x 2sbh, the qkv input 2sbh,
      the fc1 input 2sbh, the two residual-dropout masks 2 x sbh;
  split across TP ranks (24 s b h): q, k, v 3 x 2sbh, the output-projection input 2sbh, the GELU input 8sbh,
      the fc2 input 8sbh;
  attention core, split across TP ranks (5 a s^2 b): softmax output 2as^2b, attention-dropout mask as^2b,
      attention-dropout output 2as^2b.

So: no parallelism 34sbh + 5as^2b; TP t: sbh (10 + 24/t + 5as/(ht)); TP + sequence parallel: sbh (34 + 5as/h) / t;
selective recomputation drops the attention core (5as^2b); full recomputation keeps only the layer input, 2sbh
(2sbh/t with sequence parallel). Here the terms are written per saved tensor with the general widths (attn_width w,
d_ff f), element size `act_bytes`, and dropout masks only when dropout is on (without attention dropout the
dropout output is the softmax output itself: one a s^2 b tensor). `attention_density` scales the a s^2 b terms:
the layout density for block-sparse layers, 0 for torch's fused attention (model.dense_attention = "sdpa", which
saves no scores), 1 for the explicit softmax core.
"""
from __future__ import annotations

from dataclasses import dataclass

from gpt3d.config.model import ModelConfig

MASK_BYTES = 1
"""A dropout mask stores one byte (bool) per element on GPUs (CUDA native_dropout). PyTorch's CPU dropout saves a
mask of the activation dtype instead: pass mask_bytes=act_bytes to model a CPU run."""


@dataclass(frozen=True)
class SavedTensor:
    name: str
    elements: float
    """elements on one TP rank"""
    element_bytes: int

    @property
    def bytes(self) -> float:
        return self.elements * self.element_bytes


def layer_saved_tensors(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                        recompute: str, act_bytes: int = 2, attention_density: float = 1.0,
                        mask_bytes: int = MASK_BYTES) -> list[SavedTensor]:
    """The tensors one layer saves for backward for one micro-batch, on one TP rank."""
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")
    sbh = seq_len * micro_batch * model.d_model
    sbw = seq_len * micro_batch * model.attn_width
    sbf = seq_len * micro_batch * model.d_ff
    scores = model.n_heads * seq_len * seq_len * micro_batch * attention_density
    replicated = tp if sequence_parallel else 1  # divisor of the tensors that sequence parallelism shards
    if recompute == "full":
        return [SavedTensor("layer_input", sbh / replicated, act_bytes)]
    hidden_dropout = model.hidden_dropout > 0
    attn_dropout = model.attn_dropout > 0
    tensors = [
        SavedTensor("ln1_input", sbh / replicated, act_bytes),
        SavedTensor("qkv_input", sbh / replicated, act_bytes),
        SavedTensor("q", sbw / tp, act_bytes),
        SavedTensor("k", sbw / tp, act_bytes),
        SavedTensor("v", sbw / tp, act_bytes),
        SavedTensor("out_proj_input", sbw / tp, act_bytes),
        SavedTensor("ln2_input", sbh / replicated, act_bytes),
        SavedTensor("fc1_input", sbh / replicated, act_bytes),
        SavedTensor("gelu_input", sbf / tp, act_bytes),
        SavedTensor("fc2_input", sbf / tp, act_bytes),
    ]
    if hidden_dropout:
        tensors += [SavedTensor("attn_residual_dropout_mask", sbh / replicated, mask_bytes),
                    SavedTensor("mlp_residual_dropout_mask", sbh / replicated, mask_bytes)]
    if recompute == "none" and scores > 0:
        tensors.append(SavedTensor("softmax_output", scores / tp, act_bytes))
        if attn_dropout:
            tensors += [SavedTensor("attention_dropout_mask", scores / tp, mask_bytes),
                        SavedTensor("attention_dropout_output", scores / tp, act_bytes)]
    return tensors


def layer_activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                           recompute: str, act_bytes: int = 2, attention_density: float = 1.0,
                           mask_bytes: int = MASK_BYTES) -> float:
    """Bytes one layer keeps for backward per micro-batch on one TP rank (sum of `layer_saved_tensors`)."""
    return sum(t.bytes for t in layer_saved_tensors(model, micro_batch, seq_len, tp, sequence_parallel, recompute,
                                                     act_bytes, attention_density, mask_bytes))


def embedding_activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int,
                               sequence_parallel: bool) -> float:
    """The embedding's dropout mask (the embedding output itself is the first layer's input, counted there)."""
    if model.hidden_dropout <= 0:
        return 0.0
    return seq_len * micro_batch * model.d_model / (tp if sequence_parallel else 1) * MASK_BYTES


LOGITS_BYTES = 4
"""The vocab-parallel cross-entropy keeps fp32 logits/softmax for its backward."""


def head_activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                          act_bytes: int = 2) -> float:
    """Final LayerNorm input + head input + fp32 logits (Korthikanti's 4sbh/t (1 + V/h) with their element sizes)."""
    sbh = seq_len * micro_batch * model.d_model
    replicated = tp if sequence_parallel else 1
    logits = seq_len * micro_batch * model.padded_vocab_size / tp * LOGITS_BYTES
    return 2 * sbh / replicated * act_bytes + logits
