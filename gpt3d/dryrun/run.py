"""Dry run of one rank: build its real Trainer under fake tensors and run one real training step under the memory
timeline. Nothing is allocated; the result is the rank's peak bytes per category."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from gpt3d.config.run import RunConfig
from gpt3d.parallel import data_parallel
from gpt3d.parallel.pipeline import p2p
from gpt3d.train.trainer import Trainer

from .tracker import MemoryTimeline, Peak
from .world import init_fake_rank, leave_fake_world

COMM_CODES = frozenset({p2p.exchange.__code__, data_parallel.GradSynchronizer._launch.__code__,
                        data_parallel.GradSynchronizer.gather_params.__code__,
                        data_parallel.GradSynchronizer.gather_grads.__code__})
"""Functions whose allocations are communication buffers: pipeline send/receive, bucket reduce-scatter outputs,
all-gathers. (The stage input received from the previous stage is relabelled an activation when the forward takes
it: it is the first layer's saved input.)"""


@dataclass(frozen=True)
class DryRunResult:
    rank: int
    coords: tuple[int, int, int]  # (tp_rank, dp_rank, pp_rank)
    peak: Peak
    num_microbatches: int  # micro-batches of the real step
    ran_microbatches: int  # micro-batches the dry run executed (see `microbatches_to_run`)
    seconds: float


def microbatches_to_run(num_micro: int, pp: int, vp: int, schedule: str) -> int:
    """Enough micro-batches to reach the step's peak, which later micro-batches only repeat: 1F1B keeps at most
    p - s micro-batches on stage s, all in flight once p have started, so p micro-batches run warm-up, one steady step
    and cool-down and peak as the full step; interleaved 1F1B warms up 2 (p - 1) + (v - 1) p chunks on the first
    stage, so 2p (a multiple of p, as it needs). GPipe holds every micro-batch, and so may the zero-bubble schedules,
    whose deferred weight-gradient steps keep their inputs for a number of micro-batches that depends on m: all m."""
    if schedule in ("gpipe", "zbh1", "zbv"):
        return num_micro
    one_chunk = vp == 1 and schedule == "1f1b"
    return min(num_micro, pp if one_chunk else 2 * pp)


def _label_trainer_state(tracker: MemoryTimeline, trainer: Trainer) -> None:
    """params / grads / optimizer by identity: the bucket buffers and the optimizer's own tensors."""
    buckets = trainer.sync.all_buckets()
    for state in trainer.optimizer.states:
        tracker.label([v for v in vars(state).values() if isinstance(v, torch.Tensor)], "optimizer")
    tracker.label([p for chunk in trainer.chunks for p in chunk.parameters()], "params")
    tracker.label([b.param_data for b in buckets], "params")
    tracker.label([b.grad_data for b in buckets], "grads")


def _label_deferred_weight_grads(tracker: MemoryTimeline, trainer: Trainer) -> None:
    """Zero-bubble schedules: the output gradients a B hands to the WeightGradStore for its deferred W are
    `deferred_w` (created in backward, they would otherwise count as temporaries), and so are the inputs it hands
    over when the backward made them (full recomputation; saved activations stay activations). Wraps this trainer's
    store's `defer` (an instance attribute; the code that calls it is unchanged)."""
    store = getattr(trainer, "weight_grads", None)
    if store is None:
        return
    defer = store.defer

    def labelled(param, inputs, grad_output, fp32):
        tracker.label([grad_output], "deferred_w")
        tracker.label([inputs], "deferred_w", only_from="temporaries")
        defer(param, inputs, grad_output, fp32)
    store.defer = labelled


def _hook_forwards(tracker: MemoryTimeline, trainer: Trainer) -> list:
    def enter(module, args):
        tracker.forward_enter()
        received = args[0] if args else None
        if isinstance(received, torch.Tensor) and received.is_floating_point():
            tracker.label([received], "activations")

    def leave(module, args, output):
        tracker.forward_exit()

    handles = []
    for chunk in trainer.chunks:
        handles += [chunk.register_forward_pre_hook(enter), chunk.register_forward_hook(leave)]
    return handles


_RESULTS: dict[tuple, DryRunResult] = {}
"""Results of this process's dry runs by everything that decides memory (a command checks a layout once)."""


def _memory_key(cfg: RunConfig, world_size: int, rank: int, micro_batches: Optional[int]) -> tuple:
    train = cfg.train
    return (repr(cfg.model), repr(cfg.parallel), repr(cfg.optim), train.global_batch_size, train.micro_batch_size,
            train.seq_len, train.dtype, world_size, rank, micro_batches)


def dry_run(cfg: RunConfig, world_size: int, rank: int, micro_batches: Optional[int] = None) -> DryRunResult:
    """Peak memory of `rank` in a job of `world_size` ranks running `cfg` (one real training step, fake tensors)."""
    key = _memory_key(cfg, world_size, rank, micro_batches)
    if key not in _RESULTS:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
            _RESULTS[key] = _dry_run(cfg, world_size, rank, micro_batches)
    return _RESULTS[key]


def _dry_run(cfg: RunConfig, world_size: int, rank: int, micro_batches: Optional[int]) -> DryRunResult:
    start = time.perf_counter()
    # The fake tensors live on the CPU but stand in for GPU memory: take the GPU's GEMMs (model.bf16_matmul auto is
    # torch's bf16 GEMM there), not the CPU's fp32 route, whose fp32 logits and casts a GPU never allocates; and the
    # GPU's attention core (model.dense_attention auto is torch's fused attention there, not the CPU's blocked core).
    core = "sdpa" if cfg.model.dense_attention == "auto" else cfg.model.dense_attention
    cfg = replace(cfg, model=replace(cfg.model, bf16_matmul="bf16", dense_attention=core))
    runtime = init_fake_rank(cfg, world_size, rank)
    try:
        ctx = runtime.ctx
        ran = micro_batches or microbatches_to_run(runtime.num_micro, ctx.layout.pp, ctx.layout.vp,
                                                   cfg.parallel.schedule)
        tracker = MemoryTimeline(comm_codes=COMM_CODES)
        seq = cfg.train.seq_len or cfg.model.seq_len
        samples = np.zeros((ran * cfg.train.micro_batch_size * ctx.layout.dp, seq + 1), dtype=np.int64)
        with FakeTensorMode(allow_non_fake_inputs=True), tracker:
            trainer = Trainer(cfg, runtime)
            _label_trainer_state(tracker, trainer)
            _label_deferred_weight_grads(tracker, trainer)
            handles = _hook_forwards(tracker, trainer)
            tracker.start_window()
            trainer.train_step(samples)
            for handle in handles:
                handle.remove()
            peak = tracker.peak()
        coords = (ctx.tp_rank, ctx.dp_rank, ctx.pp_rank)
    finally:
        leave_fake_world()
    return DryRunResult(rank, coords, peak, runtime.num_micro, ran, time.perf_counter() - start)
