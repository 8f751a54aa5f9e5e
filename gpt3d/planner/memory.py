"""Memory per GPU of a layout, for the most loaded rank (the first pipeline stage; under a zero-bubble schedule
the stage with the largest total, usually the last), and the fit check.

Bytes per parameter (mixed precision keeps bf16/fp16 weights, fp32 gradients and fp32 Adam state):
  weights 2 + gradients 4 + optimizer 12 (fp32 master 4, Adam m 4, v 4) = 18 bytes;
  with the distributed optimizer (ZeRO-1) the 12 optimizer bytes are sharded over dp: 6 + 12 / dp.
  fp32 training: weights 4 + gradients 4 + optimizer 8 (m, v; the weights are the master copy) = 16, or 8 + 8 / dp.
These are Megatron-LM's numbers (docs/distrib_optimizer: "bf16 param, fp32 grads: 18 -> 6 + 12/d").

Activations: activations.py (Korthikanti et al. 2022, adjusted to the tensors gpt3d saves) times the model chunks a
stage holds at its peak (`stage_chunks_in_flight`); zero-bubble schedules also keep each pending W's output
gradients (`deferred_w`: activations.deferred_weight_grad_bytes x schedule.weight_grads_pending, per stage; ZB-V's
rank 0 holds the head as well as the embedding); communication buffers: see `comm_buffer_bytes`. Checked per
category against `gpt3d dryrun` (the real code of one rank under fake tensors): tests/dryrun, benchmarks/dryrun.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from gpt3d.config.model import ModelConfig

from .activations import (LOSS_LOGITS_BYTES, deferred_weight_grad_bytes, embedding_activation_bytes,
                          fused_attention_shares, head_activation_bytes, layer_saved_tensors, stage_output_bytes,
                          weight_grad_input_bytes)
from .hardware import GiB, GPUSpec
from .schedule import split_backward_activation_peak, weight_grads_pending
from .sparsity import layout_density, materialized_score_fraction

WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
"""Bytes of one model weight as the forward uses it."""
GRAD_BYTES = {"bf16": 4, "fp16": 4, "fp32": 4}
"""Gradients accumulate (across micro-batches) and reduce in fp32."""
OPTIMIZER_BYTES = {"bf16": 12, "fp16": 12, "fp32": 8}
"""fp32 master weights (mixed precision only) + Adam first and second moments."""
ACTIVATION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
"""Element size of saved activations."""
NCCL_COMMUNICATOR_BYTES = 128 * 1024 ** 2
"""NCCL buffers per communicator a rank belongs to: NCCL_BUFFSIZE 4 MiB x 2 directions x up to 16 channels."""
USABLE_MEMORY_FRACTION = 0.92
"""Share of device memory tensors can use: the CUDA context (~0.5-1 GiB) and caching-allocator fragmentation take
the rest (PyTorch typically reserves 5-10% more than it allocates)."""


ZERO_BUBBLE_SCHEDULES = ("zbh1", "zbv")
"""Schedules whose activation bound comes from schedule.py and that keep output gradients for deferred W's."""


class LayoutError(ValueError):
    """The layout does not divide the GPUs/model/batch, or does not fit in memory. The message has the numbers."""


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU (by default the most loaded: see estimate_memory)."""

    params: float
    grads: float
    optimizer: float
    activations: float
    comm_buffers: float
    deferred_w: float = 0.0
    """output gradients kept for deferred weight-gradient steps (zero-bubble schedules)"""
    held_peak: Optional[float] = None
    """zero-bubble schedules: the peak of activations + deferred_w together (each field above is its own peak; they
    peak at different times of the step); None: their sum"""
    total: float = field(init=False)

    def __post_init__(self):
        held = self.activations + self.deferred_w if self.held_peak is None else self.held_peak
        object.__setattr__(self, "total", self.params + self.grads + self.optimizer + held + self.comm_buffers)

    def gib(self) -> dict[str, float]:
        return {k: v / GiB for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        g = self.gib()
        deferred = f", deferred W {g['deferred_w']:.1f}" if self.deferred_w else ""
        if self.held_peak is not None:
            deferred += f", both at once {g['held_peak']:.1f}"
        return (f"{g['total']:.1f} GiB per GPU (params {g['params']:.1f}, grads {g['grads']:.1f}, optimizer "
                f"{g['optimizer']:.1f}, activations {g['activations']:.1f}{deferred}, comm buffers "
                f"{g['comm_buffers']:.1f})")


def _check_dtype(dtype: str) -> None:
    if dtype not in WEIGHT_BYTES:
        raise ValueError(f"dtype must be one of {list(WEIGHT_BYTES)}, got {dtype!r}")


def layer_parameter_split(model: ModelConfig) -> tuple[int, int]:
    """(TP-sharded, replicated) parameters of one layer: the GEMM weights and column biases shard; LayerNorms and
    the row-parallel output biases are replicated on every TP rank."""
    d, a, f = model.d_model, model.attn_width, model.d_ff
    sharded = d * 3 * a + 3 * a + a * d + d * f + f + f * d
    replicated = 2 * 2 * d + d + d
    return sharded, replicated


def first_stage_parameters(model: ModelConfig, tp: int, pp: int) -> float:
    """Parameters held by one rank of the first pipeline stage (its layers + embeddings; + head when pp == 1)."""
    sharded, replicated = layer_parameter_split(model)
    layers = model.n_layers / pp * (sharded / tp + replicated)
    embeddings = model.padded_vocab_size * model.d_model / tp + model.seq_len * model.d_model
    params = layers + embeddings
    if pp == 1:
        params += 2 * model.d_model  # final LayerNorm
        if not model.tie_embeddings:
            params += model.padded_vocab_size * model.d_model / tp
    return params


def last_stage_parameters(model: ModelConfig, tp: int, pp: int) -> float:
    """Parameters of one rank of the last stage (layers, final LayerNorm, head or its tied embedding copy)."""
    if pp == 1:
        return first_stage_parameters(model, tp, pp)
    sharded, replicated = layer_parameter_split(model)
    return (model.n_layers / pp * (sharded / tp + replicated) + 2 * model.d_model
            + model.padded_vocab_size * model.d_model / tp)


def stage_parameters(model: ModelConfig, tp: int, pp: int, stage: int = 0, schedule: str = "1f1b") -> float:
    """Parameters of one rank of pipeline stage `stage` (0 first, pp - 1 last; the others hold only layers). Under
    ZB-V rank 0 holds the first and the last virtual stage: the embedding and the final LayerNorm and head (a tied
    head is a second copy there, summed locally), and rank pp - 1 only layers."""
    if schedule == "zbv" and pp > 1:
        sharded, replicated = layer_parameter_split(model)
        layers = model.n_layers / pp * (sharded / tp + replicated)
        if stage != 0:
            return layers
        head = model.padded_vocab_size * model.d_model / tp
        return first_stage_parameters(model, tp, pp) + 2 * model.d_model + head
    if stage == 0:
        return first_stage_parameters(model, tp, pp)
    if stage == pp - 1:
        return last_stage_parameters(model, tp, pp)
    sharded, replicated = layer_parameter_split(model)
    return model.n_layers / pp * (sharded / tp + replicated)


def stage_chunks_in_flight(pp: int, vp: int, num_microbatches: int, schedule: str, stage: int = 0) -> int:
    """Forwards (one model chunk of n_layers / (pp vp) layers on one micro-batch) whose activations stage `stage`
    holds at its peak: GPipe all m; 1F1B min(p - s, m) (warm-up p - s - 1, then one more); interleaved 1F1B warms up
    2 (p - s - 1) + (v - 1) p chunks and runs one more (Megatron-LM's schedule, gpt3d/parallel/pipeline)."""
    if schedule == "gpipe":
        return num_microbatches * vp
    if pp == 1:
        return 1
    if vp == 1:
        return min(pp - stage, num_microbatches)
    return min(2 * (pp - stage - 1) + (vp - 1) * pp + 1, num_microbatches * vp)


def comm_tensor_bytes(model: ModelConfig, tp: int, pp: int, dp: int, micro_batch: int, seq_len: int,
                      sequence_parallel: bool, act_bytes: int, distributed_optimizer: bool, params: float,
                      stage: int = 0) -> float:
    """The largest set of communication buffers that are tensors alive at once: the pipeline's receive buffer for the
    gradient coming back (stages before the last; a received activation is the first layer's saved input and counts
    as an activation; sends go from the tensor itself), or, after backward, the distributed optimizer's
    reduce-scatter outputs (fp32, 1/dp of every bucket, all in flight when reduction overlaps backward). The
    sequence-parallel all-gather output is saved by the linear that consumes it (an activation)."""
    receive = 0.0
    if stage < pp - 1:
        receive = seq_len * micro_batch * model.d_model / (tp if sequence_parallel else 1) * act_bytes
    reduce_scatter = params * GRAD_BYTES["fp32"] / dp if distributed_optimizer and dp > 1 else 0.0
    return max(receive, reduce_scatter)


def nccl_buffer_bytes(tp: int, pp: int, dp: int) -> float:
    """NCCL's own buffers (not tensors, invisible to PyTorch): one set per communicator this rank belongs to."""
    return sum(1 for size in (tp, pp, dp) if size > 1) * NCCL_COMMUNICATOR_BYTES


def comm_buffer_bytes(model: ModelConfig, tp: int, pp: int, dp: int, micro_batch: int, seq_len: int,
                      sequence_parallel: bool, act_bytes: int, distributed_optimizer: bool = False,
                      params: float = 0.0, stage: int = 0) -> float:
    """Communication tensors + NCCL communicators (see `comm_tensor_bytes`, `nccl_buffer_bytes`)."""
    return (comm_tensor_bytes(model, tp, pp, dp, micro_batch, seq_len, sequence_parallel and tp > 1, act_bytes,
                              distributed_optimizer, params, stage)
            + nccl_buffer_bytes(tp, pp, dp))


def estimate_memory(model: ModelConfig, tp: int, pp: int, dp: int, vp: int, micro_batch: int, seq_len: int,
                    num_microbatches: int, sequence_parallel: bool, recompute: str, distributed_optimizer: bool,
                    dtype: str = "bf16", schedule: str = "1f1b", stage: Optional[int] = None) -> MemoryBreakdown:
    """Memory of one rank of pipeline stage `stage`, in bytes; None: the most loaded stage (the first, or under a
    zero-bubble schedule the stage with the largest total, whose pending W's hold the most output gradients)."""
    if stage is None:
        stages = range(pp) if schedule in ZERO_BUBBLE_SCHEDULES else (0,)
        return max((estimate_memory(model, tp, pp, dp, vp, micro_batch, seq_len, num_microbatches, sequence_parallel,
                                    recompute, distributed_optimizer, dtype, schedule, s) for s in stages),
                   key=lambda m: m.total)
    _check_dtype(dtype)
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("vp", vp), ("micro_batch", micro_batch),
                        ("seq_len", seq_len), ("num_microbatches", num_microbatches)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= stage < pp:
        raise ValueError(f"stage must be in 0 .. {pp - 1}, got {stage}")
    sequence_parallel = sequence_parallel and tp > 1
    params = stage_parameters(model, tp, pp, stage, schedule)
    optimizer_shards = dp if distributed_optimizer else 1
    act_bytes = ACTIVATION_BYTES[dtype]
    fused_share, sparse_share = fused_attention_shares(model)
    # Scores in memory: the explicit softmax core's, and the block-sparse reference's (the fused kernels keep them on
    # chip and save row statistics instead: fused_share).
    density = materialized_score_fraction(model, seq_len)
    if model.kernels == "fused" and "sparse" in model.layer_attention_kinds():
        density -= sparse_share * layout_density(model.sparse, seq_len, model.n_heads)
    saved = layer_saved_tensors(model, micro_batch, seq_len, tp, sequence_parallel, recompute, act_bytes, density,
                                fused_share=fused_share, sparse_share=sparse_share)
    per_layer = sum(t.bytes for t in saved)
    output = stage_output_bytes(model, micro_batch, seq_len, tp, sequence_parallel, act_bytes)
    deferred_w, held_peak = 0.0, None
    if schedule in ZERO_BUBBLE_SCHEDULES and pp > 1:
        # From its own action list: a chunk holds everything (and its output) from F to B, its linears' inputs and
        # their output gradients from B to W.
        chunk_layers = model.n_layers / (pp * vp)
        full, after_b = chunk_layers * per_layer + output, chunk_layers * weight_grad_input_bytes(saved)
        gradients = chunk_layers * deferred_weight_grad_bytes(model, micro_batch, seq_len, tp, recompute, act_bytes)
        activations = split_backward_activation_peak(pp, vp, num_microbatches, schedule, stage, full, after_b)
        deferred_w = weight_grads_pending(pp, vp, num_microbatches, schedule, stage) * gradients
        held_peak = split_backward_activation_peak(pp, vp, num_microbatches, schedule, stage, full,
                                                   after_b + gradients)
        chunks = min(pp, num_microbatches)  # micro-batches whose embedding dropout mask the first stage holds
    else:
        chunks = stage_chunks_in_flight(pp, vp, num_microbatches, schedule, stage)
        activations = (per_layer * model.n_layers / (pp * vp) + output) * chunks
    extra = 0.0  # held all step long (the head's) or per micro-batch in flight (the embedding's dropout mask)
    if stage == 0:
        extra += chunks * embedding_activation_bytes(model, micro_batch, seq_len, tp, sequence_parallel)
    head_stage = 0 if schedule == "zbv" else pp - 1  # ZB-V's V ends on rank 0
    if stage == head_stage:
        extra += head_activation_bytes(model, micro_batch, seq_len, tp, sequence_parallel, act_bytes,
                                       LOSS_LOGITS_BYTES[dtype])
    activations += extra
    if held_peak is not None:
        held_peak += extra
    return MemoryBreakdown(
        params=params * WEIGHT_BYTES[dtype],
        grads=params * GRAD_BYTES[dtype],
        optimizer=params * OPTIMIZER_BYTES[dtype] / optimizer_shards,
        activations=activations,
        comm_buffers=comm_buffer_bytes(model, tp, pp, dp, micro_batch, seq_len, sequence_parallel, act_bytes,
                                       distributed_optimizer, params, stage),
        deferred_w=deferred_w,
        held_peak=held_peak,
    )


def usable_bytes(gpu: GPUSpec) -> float:
    return gpu.memory_bytes * USABLE_MEMORY_FRACTION
