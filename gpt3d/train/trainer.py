"""One rank's share of training: model chunks, gradient sync, optimizer, and the step that runs the schedule."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gpt3d.config.run import RunConfig
from gpt3d.parallel import comm
from gpt3d.parallel.build import build_model_chunks
from gpt3d.parallel.data_parallel import GradSynchronizer
from gpt3d.parallel.optimizer import DynamicLossScaler, ShardedAdamW, lr_at
from gpt3d.parallel.pipeline.actions import Schedule
from gpt3d.parallel.pipeline.p2p import P2PShape
from gpt3d.parallel.pipeline.runner import StageRunner
from gpt3d.parallel.pipeline.schedules import SPLIT_BACKWARD, build_schedule, forward_only
from gpt3d.parallel.random import seed_everything
from gpt3d.parallel.tensor import attach_weight_grad_store
from gpt3d.parallel.weight_grad import WeightGradStore

from .precision import compute_dtype, require_dtype_runs
from .runtime import Runtime


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    applied: bool
    seconds: float
    busy_s: float
    comm_bytes: dict
    metrics: dict = field(default_factory=dict)  # objective-specific means (fine-tuning: accuracies, margins)


class Trainer:
    def __init__(self, cfg: RunConfig, runtime: Runtime):
        self.cfg, self.rt, self.ctx = cfg, runtime, runtime.ctx
        self.dtype = compute_dtype(cfg.train.dtype)
        require_dtype_runs(cfg.train.dtype, self.dtype, self.ctx.device)
        self.tracker = seed_everything(cfg.train.seed, self.ctx.tp_rank, self.ctx.pp_rank, self.ctx.device)
        self.chunks = build_model_chunks(cfg.model, cfg.parallel, self.ctx, cfg.train.seed, self.tracker)
        fusion = cfg.parallel.gradient_accumulation_fusion
        self.sync = GradSynchronizer(self.ctx, self.chunks, cfg.parallel.bucket_mb, cfg.parallel.overlap_grad_reduce,
                                     cfg.parallel.distributed_optimizer, self.dtype, fuse_weight_grads=fusion)
        self.optimizer = ShardedAdamW(self.ctx, self.sync, cfg.optim)
        self.scaler = DynamicLossScaler(cfg.optim.initial_loss_scale, cfg.optim.loss_scale_window,
                                        enabled=cfg.train.dtype == "fp16")
        self.step_index = 0
        self.schedule = cfg.parallel.schedule  # the config resolved vp > 1 with 1f1b to interleaved
        self.weight_grads = None
        if self.schedule in SPLIT_BACKWARD or fusion:  # the blocks' linears hand their weight gradients to the sync
            self.weight_grads = WeightGradStore(self.sync.accumulate_weight_grad)
            attach_weight_grad_store(self.chunks, self.weight_grads)
        self._schedules: dict[tuple[bool, int], Schedule] = {}
        self.last_runner: StageRunner | None = None

    # -- helpers --------------------------------------------------------------------------------------------------
    def p2p_shape(self, micro_batch: int, seq_len: int) -> P2PShape:
        tp = self.ctx.layout.tp
        local_seq = seq_len // tp if self.cfg.parallel.sequence_parallel else seq_len
        return P2PShape((micro_batch, local_seq, self.cfg.model.d_model), self.dtype)  # activations' own dtype

    def pipeline_schedule(self, num_micro: int, training: bool = True) -> Schedule:
        """Every rank's action list for `num_micro` micro-batches (built once per count)."""
        key = (training, num_micro)
        if key not in self._schedules:
            layout = self.ctx.layout
            self._schedules[key] = (build_schedule(self.schedule, layout.pp, num_micro, layout.vp) if training
                                    else forward_only(layout.pp, num_micro, layout.vp, self.schedule))
        return self._schedules[key]

    def make_runner(self, inputs: list[torch.Tensor], labels: list[torch.Tensor], training: bool = True,
                    chunks: list | None = None):
        """A runner over this rank's chunks (or `chunks`: another model of the same layout, forward only)."""
        spec = self.p2p_shape(inputs[0].shape[0], inputs[0].shape[1])
        kwargs = self.stage_kwargs(labels)
        if not training:
            return StageRunner(self.ctx, chunks or self.chunks, inputs, labels, spec, lambda c: None,
                               stage_kwargs=kwargs)
        return StageRunner(self.ctx, self.chunks, inputs, labels, spec, self.sync.enable_sync, self.scaler.scale,
                           self.weight_grads, self.sync.enable_weight_sync, stage_kwargs=kwargs)

    def stage_kwargs(self, labels: list) -> list[dict] | None:
        """Per micro-batch keywords every model chunk's forward receives (fine-tuning: the packed layout)."""
        return None

    def micro_batches(self, samples: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """This DP rank's slice of the global batch [G, s+1], cut into micro-batches of (inputs, labels)."""
        per_dp = samples.shape[0] // self.ctx.layout.dp
        mine = samples[self.ctx.dp_rank * per_dp:(self.ctx.dp_rank + 1) * per_dp]
        tokens = torch.from_numpy(np.ascontiguousarray(mine, dtype=np.int64)).to(self.ctx.device)
        mb = self.cfg.train.micro_batch_size
        inputs = [tokens[i:i + mb, :-1] for i in range(0, per_dp, mb)]
        labels = [tokens[i:i + mb, 1:] for i in range(0, per_dp, mb)]
        return inputs, labels

    def mean_loss(self, losses: list[torch.Tensor], count: int) -> float:
        """Mean of the micro-batch losses over the whole global batch, known on every rank."""
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        if losses and self.ctx.tp_rank == 0:
            total += torch.stack([l.double() for l in losses]).sum()
        if self.ctx.world_group.size > 1:
            comm.reduce_in_place(total, self.ctx.world_group)
        return total.item() / count

    # -- training -------------------------------------------------------------------------------------------------
    def train_step(self, samples: np.ndarray) -> StepResult:
        start = time.perf_counter()
        for chunk in self.chunks:
            chunk.train()
        self.ctx.reset_comm_bytes()
        inputs, labels = self.micro_batches(samples)
        runner = self.make_runner(inputs, labels)
        self.sync.zero_grad()
        runner.run(self.pipeline_schedule(len(inputs)))
        self.ctx.schedule_step = "gradient reduction"
        self.sync.finish()
        lr = lr_at(self.step_index, self.cfg.optim, self.cfg.train.steps)
        self.ctx.schedule_step = "optimizer step"
        norm, applied = self.optimizer.step(lr, self.scaler.scale)
        self.scaler.update(applied)
        self.ctx.schedule_step = "loss all-reduce"
        loss = self.mean_loss(runner.losses, len(inputs) * self.ctx.layout.dp)
        self.step_index += 1
        # A failure in the loop's own collectives between steps must not be reported as inside this step.
        self.ctx.schedule_step = f"between steps (after step {self.step_index})"
        self.last_runner = runner
        return StepResult(loss, norm, lr, applied, time.perf_counter() - start, runner.busy_s,
                          self.ctx.comm_bytes())

    @torch.no_grad()
    def eval_loss(self, samples: np.ndarray) -> float:
        """Forward-only pass over one global batch (pipeline: forward schedule, no backward)."""
        for chunk in self.chunks:
            chunk.eval()
        inputs, labels = self.micro_batches(samples)
        runner = self.make_runner(inputs, labels, training=False)
        runner.run(self.pipeline_schedule(len(inputs), training=False))
        return self.mean_loss(runner.losses, len(inputs) * self.ctx.layout.dp)
