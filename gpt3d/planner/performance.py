"""Predicted step time of a layout: compute, tensor-parallel communication, pipeline bubble and point-to-point,
data-parallel gradient reduction not hidden behind the backward, and the optimizer step.

Per layer and micro-batch on one rank (m = micro_batch x seq_len tokens, widths divided by tp):
- GEMMs: qkv [m, d] x [d, 3a/t], out-proj [m, a/t] x [a/t, d], fc1 [m, d] x [d, f/t], fc2 [m, f/t] x [f/t, d] and the
  attention core, b a/t batched [s, d_head] x [d_head, s] and [s, s] x [s, d_head] (times the layout density for
  block-sparse layers); backward = the two GEMMs of each forward GEMM (input and weight gradients). Each GEMM's
  time comes from efficiency.gemm_time (shape-dependent efficiency, roofline).
- Elementwise kernels (memory-bound, at the HBM rate): two LayerNorms, two bias-dropout-residual adds, bias-GELU,
  scale-mask-softmax and attention dropout; their backward streams BACKWARD_ELEMENTWISE_FACTOR x the bytes.
  Under sequence parallelism the LayerNorm / dropout-add work is divided by tp.
- TP communication: 2 all-reduces of [m, d] in the forward and 2 in the backward (sequence parallel: all-gathers and
  reduce-scatters of the same total volume); full recomputation repeats the forward ones.
- Recomputation: selective re-runs the attention core (GEMMs + softmax + dropout), full re-runs the layer forward.
A stage runs n_layers / pp layers; the first stage adds the embedding, the last the head and the cross-entropy; the
slower of the two sets the pipeline's pace. A step takes (m + (p - 1) / v) micro-batch slots (schedule.py); every
micro-batch also pays 2 v point-to-point transfers of its [m, d] / tp activation (scatter/gather optimisation) between
stages. DP: ring all-reduce (or reduce-scatter + all-gather of the weights with the distributed optimizer) of the
gradients in buckets, overlapped with the last micro-batch's backward except the last bucket.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from gpt3d.config.model import ModelConfig
from gpt3d.model.flops import model_training_flops

from . import communication as comm
from .activations import LOSS_LOGITS_BYTES
from .efficiency import gemm_time, memory_bound_time
from .hardware import GPUSpec
from .layout import Layout
from .schedule import bubble_slots
from .memory import (ACTIVATION_BYTES, WEIGHT_BYTES, MemoryBreakdown, estimate_memory, first_stage_parameters,
                     last_stage_parameters, usable_bytes)
from .sparsity import layout_density, materialized_score_fraction, mean_attention_density

BACKWARD_ELEMENTWISE_FACTOR = 2.0
"""An elementwise backward reads the saved input and the output gradient and writes the input gradient: about twice
the bytes of the forward (which reads the input and writes the output)."""
CROSS_ENTROPY_PASSES = 4
"""Passes over the [tokens, vocab/t] logits: write logits, max + sum-exp read, softmax write, gradient write; each
pass moves activations.LOSS_LOGITS_BYTES a logit (the loss works on bf16 logits in place, on an fp32 copy of fp16)."""
STATISTIC_BYTES = 4
"""The vocab-parallel loss all-reduces three fp32 values per token (max, sum-exp, target logit)."""
ADAM_STEP_BYTES = {"bf16": 38, "fp16": 38, "fp32": 36}
"""Bytes the optimizer step streams per (local) parameter: Adam reads master weight, gradient, m, v (16) and writes
master, m, v (12) and the bf16 copy (2); gradient clipping reads the gradients (4); zeroing writes them (4).
fp32 has no separate bf16 copy and its weights are the master (36)."""
ELEMENTWISE_KERNELS_PER_LAYER = 7
"""LayerNorm x 2, bias-dropout-add x 2, bias-GELU, scale-mask-softmax, attention dropout (Megatron's fused kernels)."""
GRAD_ACCUMULATE_READS_WRITES = 3
"""Accumulating a micro-batch's weight gradient into the main-gradient buffer reads the fresh gradient, reads and
writes the accumulator: 3 passes (weight-sized, grad-sized x 2) per parameter per micro-batch."""
DEFAULT_BUCKET_BYTES = 25e6
"""gpt3d's default DP gradient bucket (parallel.bucket_mb = 25)."""


@dataclass(frozen=True)
class PerformanceOptions:
    """Cluster and implementation settings the step time depends on (besides the layout)."""

    gpus_per_node: int = 8
    overlap_grad_reduce: bool = True
    """launch each gradient bucket's reduction during the backward (gpt3d default)"""
    grad_reduce_bytes: int = 4
    """element size of the reduced gradients (gpt3d: fp32 main grads)"""
    bucket_bytes: float = DEFAULT_BUCKET_BYTES
    dtype: str = "bf16"


@dataclass(frozen=True)
class TimeBreakdown:
    """Seconds per step on the critical path (they add up to the step time)."""

    compute: float
    tp_comm: float
    pp_bubble: float
    pp_comm: float
    dp_comm_exposed: float
    optimizer: float
    total: float = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "total", self.compute + self.tp_comm + self.pp_bubble + self.pp_comm
                           + self.dp_comm_exposed + self.optimizer)


@dataclass(frozen=True)
class Prediction:
    layout: Layout
    iteration_time_s: float
    tokens_per_s: float
    model_tflops_per_gpu: float
    """model FLOPs (no recomputation, Megatron's 72 B s l h^2 (...) for dense models) per second per GPU"""
    hardware_tflops_per_gpu: float
    """FLOPs actually executed, recomputation included (Megatron's eq. 3 with full recomputation)"""
    mfu: float
    time: TimeBreakdown
    memory: MemoryBreakdown
    memory_capacity: float
    """usable bytes of one GPU"""

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_capacity

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fits"] = self.fits
        return out


@dataclass(frozen=True)
class _Work:
    """Seconds of a piece of work split by kind."""

    compute: float = 0.0
    tp_comm: float = 0.0

    def __add__(self, other: "_Work") -> "_Work":
        return _Work(self.compute + other.compute, self.tp_comm + other.tp_comm)

    def scale(self, factor: float) -> "_Work":
        return _Work(self.compute * factor, self.tp_comm * factor)

    @property
    def total(self) -> float:
        return self.compute + self.tp_comm


def _linear(m: int, n: int, k: int, gpu: GPUSpec, act_bytes: int, batch: int = 1) -> tuple[float, float]:
    """(forward, backward) seconds of [m, k] @ [k, n]; backward = input gradient [m, n] @ [n, k] + weight gradient
    [k, m] @ [m, n]."""
    fwd = gemm_time(m, n, k, gpu, batch, act_bytes)
    bwd = gemm_time(m, k, n, gpu, batch, act_bytes) + gemm_time(k, n, m, gpu, batch, act_bytes)
    return fwd, bwd


@dataclass(frozen=True)
class LayerTimes:
    """One layer, one micro-batch, one rank."""

    forward: _Work
    backward: _Work
    recompute: _Work

    @property
    def total(self) -> _Work:
        return self.forward + self.backward + self.recompute


def layer_times(model: ModelConfig, gpu: GPUSpec, tp: int, micro_batch: int, seq_len: int, sequence_parallel: bool,
                recompute: str, act_bytes: int, attention_density: float, gpus_per_node: int,
                score_fraction: float = 1.0) -> LayerTimes:
    """`attention_density`: share of the s x s square the core GEMMs compute; `score_fraction`: share written to
    memory by the softmax / dropout kernels (0 for fused attention)."""
    b, s, h = micro_batch, seq_len, model.d_model
    tokens = b * s
    w, f = model.attn_width // tp, model.d_ff // tp
    heads = model.n_heads // tp
    dense = [_linear(tokens, 3 * w, h, gpu, act_bytes), _linear(tokens, h, w, gpu, act_bytes),
             _linear(tokens, f, h, gpu, act_bytes), _linear(tokens, h, f, gpu, act_bytes)]
    core = [_linear(s, s, model.d_head, gpu, act_bytes, b * heads), _linear(s, model.d_head, s, gpu, act_bytes,
                                                                            b * heads)]
    core_fwd = sum(fwd for fwd, _ in core) * attention_density
    core_bwd = sum(bwd for _, bwd in core) * attention_density

    shard = tp if sequence_parallel else 1
    sbh = tokens * h
    scores = heads * s * s * b * score_fraction
    mask = 1 if model.hidden_dropout > 0 else 0
    ln_bytes = 2 * 2 * sbh * act_bytes / shard
    dropout_add_bytes = 2 * (3 * act_bytes + mask) * sbh / shard
    gelu_bytes = 2 * tokens * f * act_bytes
    softmax_bytes = 2 * scores * act_bytes
    attn_dropout_bytes = (2 * act_bytes + 1) * scores if model.attn_dropout > 0 else 0.0
    core_elementwise = memory_bound_time(softmax_bytes + attn_dropout_bytes, gpu, kernels=2)
    other_elementwise = memory_bound_time(ln_bytes + dropout_add_bytes + gelu_bytes, gpu,
                                          kernels=ELEMENTWISE_KERNELS_PER_LAYER - 2)

    intra = comm.tp_intra_node(tp, gpus_per_node)
    activation = sbh * act_bytes
    if sequence_parallel:
        one_direction = 2 * (comm.all_gather_time(activation, tp, gpu, intra)
                             + comm.reduce_scatter_time(activation, tp, gpu, intra))
    else:
        one_direction = 2 * comm.all_reduce_time(activation, tp, gpu, intra)

    forward = _Work(sum(fwd for fwd, _ in dense) + core_fwd + core_elementwise + other_elementwise, one_direction)
    backward = _Work(sum(bwd for _, bwd in dense) + core_bwd
                     + BACKWARD_ELEMENTWISE_FACTOR * (core_elementwise + other_elementwise), one_direction)
    if recompute == "none":
        extra = _Work()
    elif recompute == "selective":
        extra = _Work(core_fwd + core_elementwise)
    elif recompute == "full":
        extra = forward
    else:
        raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")
    return LayerTimes(forward, backward, extra)


def embedding_time(model: ModelConfig, gpu: GPUSpec, tp: int, micro_batch: int, seq_len: int,
                   sequence_parallel: bool, act_bytes: int, gpus_per_node: int) -> _Work:
    """Lookup + position add + dropout (forward and backward) and the vocab-parallel reduction across TP."""
    sbh = micro_batch * seq_len * model.d_model
    shard = tp if sequence_parallel else 1
    forward_bytes = (3 * act_bytes + 1) * sbh / shard + act_bytes * sbh
    compute = memory_bound_time(forward_bytes * (1 + BACKWARD_ELEMENTWISE_FACTOR), gpu, kernels=4)
    intra = comm.tp_intra_node(tp, gpus_per_node)
    if sequence_parallel:
        tp_comm = comm.reduce_scatter_time(sbh * act_bytes, tp, gpu, intra)
    else:
        tp_comm = comm.all_reduce_time(sbh * act_bytes, tp, gpu, intra)
    return _Work(compute, tp_comm)


def head_time(model: ModelConfig, gpu: GPUSpec, tp: int, micro_batch: int, seq_len: int, sequence_parallel: bool,
              act_bytes: int, logits_bytes: int, gpus_per_node: int) -> _Work:
    """Final LayerNorm, logits GEMM over V/t (forward + backward) and the vocab-parallel cross-entropy."""
    tokens = micro_batch * seq_len
    h, vocab = model.d_model, model.padded_vocab_size // tp
    fwd, bwd = _linear(tokens, vocab, h, gpu, act_bytes)
    shard = tp if sequence_parallel else 1
    layernorm = memory_bound_time(2 * 2 * tokens * h * act_bytes / shard * (1 + BACKWARD_ELEMENTWISE_FACTOR), gpu, 2)
    cross_entropy = memory_bound_time(tokens * vocab * logits_bytes * CROSS_ENTROPY_PASSES, gpu, kernels=4)
    intra = comm.tp_intra_node(tp, gpus_per_node)
    activation = tokens * h * act_bytes
    if sequence_parallel:
        tp_comm = (comm.all_gather_time(activation, tp, gpu, intra)
                   + comm.reduce_scatter_time(activation, tp, gpu, intra))
    else:
        tp_comm = comm.all_reduce_time(activation, tp, gpu, intra)
    tp_comm += 3 * comm.all_reduce_time(tokens * STATISTIC_BYTES, tp, gpu, intra)  # max, sum-exp, target logit
    return _Work(fwd + bwd + layernorm + cross_entropy, tp_comm)


def _attention_density(model: ModelConfig, seq_len: int) -> float:
    return mean_attention_density(model.layer_attention_kinds(), model.sparse, seq_len)


def sparse_density(model: ModelConfig, seq_len: int) -> Optional[float]:
    """Density of the model's block-sparse layers, None when every layer is dense."""
    if "sparse" not in model.layer_attention_kinds():
        return None
    return layout_density(model.sparse, seq_len)


def predict(model: ModelConfig, layout: Layout, gpu: GPUSpec, global_batch: int, seq_len: int,
            options: PerformanceOptions = PerformanceOptions()) -> Prediction:
    """Step time, throughput and memory of `layout` (which must divide; see layout.divisibility_problems)."""
    t, p, d, v = layout.tp, layout.pp, layout.dp, layout.vp
    sp = layout.sequence_parallel and t > 1
    act_bytes = ACTIVATION_BYTES[options.dtype]
    m = layout.num_microbatches(global_batch)
    if m < 1:
        raise ValueError(f"global batch {global_batch} is smaller than micro_batch*dp = {layout.micro_batch * d}")
    density = _attention_density(model, seq_len)
    per_layer = layer_times(model, gpu, t, layout.micro_batch, seq_len, sp, layout.recompute, act_bytes, density,
                            options.gpus_per_node, materialized_score_fraction(model, seq_len))
    layers = per_layer.total.scale(model.n_layers / p)
    embed = embedding_time(model, gpu, t, layout.micro_batch, seq_len, sp, act_bytes, options.gpus_per_node)
    head = head_time(model, gpu, t, layout.micro_batch, seq_len, sp, act_bytes, LOSS_LOGITS_BYTES[options.dtype],
                     options.gpus_per_node)
    first = layers + embed + (head if p == 1 or layout.schedule == "zbv" else _Work())  # zbv: V ends on rank 0
    last = layers + head
    stage = first if first.total >= last.total else last

    p2p_per_microbatch = 0.0
    if p > 1:
        message = layout.micro_batch * seq_len * model.d_model * act_bytes / t
        transfer = comm.p2p_time(message, gpu, comm.pp_intra_node(t, d, p, options.gpus_per_node))
        if t > 1 and not sp:  # scatter/gather: re-assemble the full activation inside the node
            transfer += comm.all_gather_time(message * t, t, gpu, comm.tp_intra_node(t, options.gpus_per_node))
        p2p_per_microbatch = 2 * v * transfer

    params = max(first_stage_parameters(model, t, p), last_stage_parameters(model, t, p))
    accumulate_bytes = params * (WEIGHT_BYTES[options.dtype] + 2 * options.grad_reduce_bytes)
    stage = stage + _Work(memory_bound_time(accumulate_bytes, gpu, kernels=1))
    slot = stage.total + p2p_per_microbatch
    bubble = bubble_slots(p, v, layout.schedule, m) * slot

    # data parallel
    dp_exposed = 0.0
    if d > 1:
        intra = comm.dp_intra_node(t, d, options.gpus_per_node)
        grad_bytes = params * options.grad_reduce_bytes
        buckets = max(1, math.ceil(grad_bytes / options.bucket_bytes))
        last_bucket = min(grad_bytes, options.bucket_bytes)
        _, latency = comm.link(gpu, intra)
        if layout.distributed_optimizer:
            reduce = comm.reduce_scatter_time(grad_bytes, d, gpu, intra) + (buckets - 1) * (d - 1) * latency
            last_reduce = comm.reduce_scatter_time(last_bucket, d, gpu, intra)
            gather = comm.all_gather_time(params * WEIGHT_BYTES[options.dtype], d, gpu, intra)
        else:
            reduce = comm.all_reduce_time(grad_bytes, d, gpu, intra) + (buckets - 1) * 2 * (d - 1) * latency
            last_reduce = comm.all_reduce_time(last_bucket, d, gpu, intra)
            gather = 0.0
        if options.overlap_grad_reduce:
            window = (per_layer.backward + per_layer.recompute).total * model.n_layers / p
            dp_exposed = max(reduce - window, last_reduce) + gather
        else:
            dp_exposed = reduce + gather

    local_params = params / (d if layout.distributed_optimizer else 1)
    optimizer = memory_bound_time(local_params * ADAM_STEP_BYTES[options.dtype], gpu, kernels=4)

    time = TimeBreakdown(compute=m * stage.compute, tp_comm=m * stage.tp_comm, pp_bubble=bubble,
                         pp_comm=m * p2p_per_microbatch, dp_comm_exposed=dp_exposed, optimizer=optimizer)
    memory = estimate_memory(model, t, p, d, v, layout.micro_batch, seq_len, m, sp, layout.recompute,
                             layout.distributed_optimizer, options.dtype, layout.schedule)
    density_sparse = sparse_density(model, seq_len)
    n = layout.num_gpus
    model_flops = model_training_flops(model, global_batch, seq_len, "none", density_sparse)
    hardware_flops = model_training_flops(model, global_batch, seq_len, layout.recompute, density_sparse)
    step = time.total
    model_tflops = model_flops / step / n / 1e12
    return Prediction(
        layout=layout,
        iteration_time_s=step,
        tokens_per_s=global_batch * seq_len / step,
        model_tflops_per_gpu=model_tflops,
        hardware_tflops_per_gpu=hardware_flops / step / n / 1e12,
        mfu=model_tflops / gpu.peak_tflops_bf16,
        time=time,
        memory=memory,
        memory_capacity=usable_bytes(gpu),
    )
