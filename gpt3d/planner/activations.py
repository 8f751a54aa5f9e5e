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

Where gpt3d differs from Megatron-LM (checked tensor by tensor against `gpt3d dryrun`, tests/dryrun):
- under sequence parallelism the column-parallel linears (qkv, fc1) save their all-gathered full-sequence input
  (s b h per TP rank), where Megatron saves the local shard and gathers again in backward (s b h / t): 2 s b h
  elements replicated instead of sharded;
- the fused attention kernels (torch's sdpa, gpt3d's block-sparse kernel) save fp32 row statistics (s b a / t, the
  log-sum-exp), and the block-sparse kernel's output is in [b, a, s, d] order, so the out-projection saves a
  reordered copy beside the kernel's saved output (one more s b w / t on sparse layers) unless the core is recomputed.
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


LSE_BYTES = 4
"""Fused attention kernels keep fp32 row statistics (log-sum-exp) for backward."""


def fused_attention_shares(model: ModelConfig) -> tuple[float, float]:
    """(share of layers whose attention core is a fused kernel saving row statistics, share of block-sparse layers)."""
    kinds = model.layer_attention_kinds()
    sparse = kinds.count("sparse") / len(kinds)
    dense_fused = (1 - sparse) if model.dense_attention in ("sdpa", "auto") else 0.0  # auto is sdpa on a GPU
    return dense_fused + (sparse if model.kernels == "fused" else 0.0), sparse if model.kernels == "fused" else 0.0


def layer_saved_tensors(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                        recompute: str, act_bytes: int = 2, attention_density: float = 1.0,
                        mask_bytes: int = MASK_BYTES, fused_share: float = 0.0,
                        sparse_share: float = 0.0) -> list[SavedTensor]:
    """The tensors one layer saves for backward for one micro-batch, on one TP rank. `fused_share` and `sparse_share`
    (see `fused_attention_shares`) add the fused kernels' row statistics and the sparse output's reordered copy,
    averaged over the layers."""
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
        SavedTensor("qkv_input", sbh, act_bytes),  # the all-gathered input under sequence parallelism
        SavedTensor("q", sbw / tp, act_bytes),
        SavedTensor("k", sbw / tp, act_bytes),
        SavedTensor("v", sbw / tp, act_bytes),
        SavedTensor("out_proj_input", sbw / tp, act_bytes),
        SavedTensor("ln2_input", sbh / replicated, act_bytes),
        SavedTensor("fc1_input", sbh, act_bytes),  # the all-gathered input under sequence parallelism
        SavedTensor("gelu_input", sbf / tp, act_bytes),
        SavedTensor("fc2_input", sbf / tp, act_bytes),
    ]
    if hidden_dropout:
        tensors += [SavedTensor("attn_residual_dropout_mask", sbh / replicated, mask_bytes),
                    SavedTensor("mlp_residual_dropout_mask", sbh / replicated, mask_bytes)]
    if recompute == "none" and fused_share > 0:
        tensors.append(SavedTensor("attention_row_stats", seq_len * micro_batch * model.n_heads / tp * fused_share,
                                   LSE_BYTES))
    if recompute == "none" and sparse_share > 0:
        tensors.append(SavedTensor("sparse_kernel_output", sbw / tp * sparse_share, act_bytes))
    if recompute == "none" and scores > 0:
        tensors.append(SavedTensor("softmax_output", scores / tp, act_bytes))
        if attn_dropout:
            tensors += [SavedTensor("attention_dropout_mask", scores / tp, mask_bytes),
                        SavedTensor("attention_dropout_output", scores / tp, act_bytes)]
    return tensors


def layer_activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                           recompute: str, act_bytes: int = 2, attention_density: float = 1.0,
                           mask_bytes: int = MASK_BYTES, fused_share: float = 0.0, sparse_share: float = 0.0) -> float:
    """Bytes one layer keeps for backward per micro-batch on one TP rank (sum of `layer_saved_tensors`)."""
    return sum(t.bytes for t in layer_saved_tensors(model, micro_batch, seq_len, tp, sequence_parallel, recompute,
                                                     act_bytes, attention_density, mask_bytes, fused_share,
                                                     sparse_share))


def embedding_activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int,
                               sequence_parallel: bool) -> float:
    """The embedding's dropout mask (the embedding output itself is the first layer's input, counted there)."""
    if model.hidden_dropout <= 0:
        return 0.0
    return seq_len * micro_batch * model.d_model / (tp if sequence_parallel else 1) * MASK_BYTES


LOSS_LOGITS_BYTES = {"fp32": 4, "bf16": 2, "fp16": 4}
"""Bytes per logit the loss keeps for its backward, which overwrites them with the gradient: the logits themselves in
fp32 or bf16, an fp32 copy of fp16 ones (gpt3d.model.cross_entropy.loss_workspace)."""


def head_activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                          act_bytes: int, logits_bytes: int) -> float:
    """Head input (the final LayerNorm output, all-gathered under sequence parallelism) + the logits the loss keeps.
    The final LayerNorm's input is counted by `stage_output_bytes` (Korthikanti's 4sbh/t (1 + V/h) counts it here)."""
    sbh = seq_len * micro_batch * model.d_model
    logits = seq_len * micro_batch * model.padded_vocab_size / tp * logits_bytes
    return sbh * act_bytes + logits


def stage_output_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool,
                       act_bytes: int = 2) -> float:
    """The stage's output, kept per micro-batch in flight: the pipeline runner holds what it sent until that
    micro-batch's backward; on the last stage it is the final LayerNorm's input. (The layers count their inputs.)"""
    return seq_len * micro_batch * model.d_model / (tp if sequence_parallel else 1) * act_bytes


def deferred_weight_grad_bytes(model: ModelConfig, micro_batch: int, seq_len: int, tp: int, recompute: str,
                               act_bytes: int = 2) -> float:
    """What one layer keeps per micro-batch between its B and its deferred W under a zero-bubble schedule, beyond
    its saved activations: the output gradient of each of its four linears (gpt3d/parallel/weight_grad.py keeps
    (input, output gradient) per linear until W; created in backward, so the dry run counts them as temporaries).
    qkv and fc1 are column-parallel (s b 3w / t, s b f / t); the row-parallel proj and fc2 get the full s b h (the
    backward of their all-reduce / reduce-scatter). The inputs are saved activations, still counted there, except
    under full recomputation, where the backward's recomputed forward makes them: then they count here too
    (s b h for qkv and fc1, the all-gathered input; s b w / t and s b f / t for proj and fc2)."""
    sb = seq_len * micro_batch
    d, w, f = model.d_model, model.attn_width, model.d_ff
    elements = sb * (3 * w / tp + d + f / tp + d)
    if recompute == "full":
        elements += sb * (d + w / tp + d + f / tp)
    return elements * act_bytes


WEIGHT_GRAD_INPUTS = ("qkv_input", "out_proj_input", "fc1_input", "fc2_input")
"""The saved tensors a deferred W still needs after its B: the four linears' inputs."""


def weight_grad_input_bytes(saved: list[SavedTensor]) -> float:
    """Bytes of `saved` (one layer's saved tensors) that stay from B to W under a zero-bubble schedule."""
    return sum(t.bytes for t in saved if t.name in WEIGHT_GRAD_INPUTS)
