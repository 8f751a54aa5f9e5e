"""The least time a single-process GPT training step can take on this machine, from what it must compute and move.

`gemm_floor.py` bounds a step by its linear layers' and head's GEMMs alone ("were all else free"). That bound is loose:
the step also runs the causal attention core's GEMMs, and passes over memory that no kernel can make shorter than a
copy of the same bytes. This floor adds the three parts that any implementation of the step has to pay:

- the linear layers' and head's GEMMs, as profiled (the same shapes go to the same GEMM library on every side);
- the causal attention core's GEMMs (q k^T and p v forward, four products backward, over the visible half of the
  scores), at the best GEMM rate measured in the same run;
- the bytes the loss and the optimizer must move, at the copy bandwidth measured in the same run: the loss reads the
  logits once (log-sum-exp) and reads and writes them once more (the gradient); AdamW with fp32 master weights and
  moments reads weight, gradient and both moments and writes weight and both moments, and in bf16 also writes the
  bf16 weights it serves.

Everything else (LayerNorms, GELU, residual adds, attention softmax, dropout, the gradient norm) counts as free, and
each counted part runs at its best rate, so the real step is slower: (another framework's step) / floor is the most
that gpt3d's step could be ahead of it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

ADAMW_FP32_BYTES_PER_PARAM = 28  # read weight, gradient, two moments (4 B each); write weight and two moments
LOW_PRECISION_WEIGHT_BYTES = 2  # bf16 / fp16: the rounded copy of each updated master weight, written once


def copy_bandwidth_gbs(numel: int = 1 << 26, reps: int = 10, warmup: int = 2) -> float:
    """Read + write GB/s of copying `numel` fp32 values into a preallocated tensor, fastest of `reps` (the bound a
    single-pass kernel over that many bytes can reach; 1 << 26 values is 256 MiB, beyond the caches)."""
    src, dst = torch.randn(numel), torch.empty(numel)
    best = float("inf")
    for i in range(warmup + reps):
        start = time.perf_counter()
        dst.copy_(src)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            best = min(best, elapsed)
    return 2 * numel * src.element_size() / best / 1e9


def causal_attention_gemm_flops(layers: int, batch: int, seq: int, d_model: int) -> float:
    """FLOPs of the causal attention core's GEMMs in one forward + backward, over the visible scores only (each query
    sees itself and the keys before it: seq (seq + 1) / 2 pairs per sequence). Forward q k^T and p v, 2 d_model FLOPs
    per pair each; backward dP = dO v^T, dV = P^T dO, dQ = dS k and dK = dS^T q, twice the forward."""
    visible_pairs = seq * (seq + 1) / 2
    forward = 2 * (2.0 * d_model * visible_pairs)
    return 3 * forward * batch * layers


def loss_bytes(tokens: int, padded_vocab: int, logit_bytes: int) -> float:
    """Bytes the loss moves beside the head GEMM: the log-sum-exp reads the logits, the gradient reads and writes
    them (the GEMM that writes the logits and the one that reads their gradient are counted as GEMMs)."""
    return 3.0 * tokens * padded_vocab * logit_bytes


def adamw_bytes(params: int, low_precision_weights: bool) -> float:
    """Bytes one AdamW step over `params` parameters with fp32 master weights and moments must move."""
    per_param = ADAMW_FP32_BYTES_PER_PARAM + (LOW_PRECISION_WEIGHT_BYTES if low_precision_weights else 0)
    return float(params) * per_param


@dataclass(frozen=True)
class StepFloor:
    """The parts of the floor, in seconds."""

    linear_gemms: float
    """The linear layers' and head's GEMMs, profiled."""
    attention_gemms: float
    """The causal attention core's GEMM FLOPs at the best measured GEMM rate."""
    memory: float
    """The loss's and AdamW's bytes at the measured copy bandwidth."""

    @property
    def seconds(self) -> float:
        return self.linear_gemms + self.attention_gemms + self.memory


def step_floor(linear_gemm_seconds: float, attention_flops: float, gemm_tflops: float, memory_bytes: float,
               copy_gbs: float) -> StepFloor:
    """The floor from its measured and counted parts (see the module's docstring)."""
    for name, value in (("linear_gemm_seconds", linear_gemm_seconds), ("attention_flops", attention_flops),
                        ("memory_bytes", memory_bytes)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name, value in (("gemm_tflops", gemm_tflops), ("copy_gbs", copy_gbs)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 (a measured rate), got {value}")
    return StepFloor(linear_gemms=linear_gemm_seconds, attention_gemms=attention_flops / (gemm_tflops * 1e12),
                     memory=memory_bytes / (copy_gbs * 1e9))
