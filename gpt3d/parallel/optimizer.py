"""AdamW over the flat gradient buckets, optionally sharded across data parallel (the distributed optimizer).

The update is torch's fused AdamW kernel over contiguous segments of the flat buffers, reading the fp32 main
gradients. In fp32 the parameters are their own master weights (no extra copy). In bf16/fp16 (mixed precision, as
Megatron-LM) the optimizer keeps fp32 master weights beside the Adam moments (starting from the rounded initial
weights), steps them, and copies them back into the bf16/fp16 weights (rounding once per step): the weights are always
the master rounded. Without the distributed optimizer every rank updates whole buckets;
with it each DP rank holds masters and moments only for its shard of every bucket, and the updated weight shards are
all-gathered. Both paths run the same per-element arithmetic, so they produce identical numbers. Bytes per parameter:
weights 2 + main grads 4 + master 4 + moments 8 = 18, or 6 + 12/dp with the distributed optimizer (fp32: 16, 8 + 8/dp).

The global gradient norm counts each gradient element exactly once across the world: TP-replicated parameters
on TP rank 0 only, the tied head copy on the first stage only, and replicated DP grads on DP rank 0 (or each
rank's own shard with the distributed optimizer). One all-reduce over the world gives the total.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gpt3d.config.optim import OptimConfig

from .context import ParallelContext
from .data_parallel import Bucket, GradSynchronizer


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warm-up, cosine decay to lr * min_lr_ratio over decay_steps, then constant (GPT-3 appendix B)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay = cfg.decay_steps if cfg.decay_steps is not None else max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / max(decay, 1), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass
class _ShardState:
    """One bucket's (shard of) parameters with its Adam states, cut into contiguous segments: `decay` and `no_decay`
    segments for the fused AdamW kernel, and the gradient segments this rank counts in the global norm."""
    bucket: Bucket
    master: torch.Tensor  # fp32 master weights of the bucket's (shard of) parameters (in fp32: the parameters)
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    decay: list[tuple[int, int]]
    no_decay: list[tuple[int, int]]
    counted: list[tuple[int, int]]
    model: torch.Tensor  # the bucket's (shard of) weights in the compute dtype (`master` itself in fp32)

    @property
    def has_master(self) -> bool:
        return self.master is not self.model


def _segments(flags: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs [start, end) where the 0/1 `flags` are 1."""
    runs, start = [], None
    values = flags.tolist()
    for i, value in enumerate(values + [0]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i))
            start = None
    return runs


class ShardedAdamW:
    def __init__(self, ctx: ParallelContext, sync: GradSynchronizer, cfg: OptimConfig):
        self.ctx, self.sync, self.cfg = ctx, sync, cfg
        self.step_count = 0
        self.states = [self._state_for(b) for b in sync.all_buckets()]

    def _flags(self, bucket: Bucket) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per element of the bucket: is a real parameter, takes weight decay, is counted in the norm here."""
        real = torch.zeros(bucket.padded, dtype=torch.int8)
        decay = torch.zeros(bucket.padded, dtype=torch.int8)
        count = torch.zeros(bucket.padded, dtype=torch.int8)
        for p, off in zip(bucket.params, bucket.offsets):
            n = p.numel()
            real[off:off + n] = 1
            if p.dim() >= 2:  # matrices decay; biases and norms do not
                decay[off:off + n] = 1
            replicated_over_tp = getattr(p, "shard", None) is None
            counted = not (replicated_over_tp and self.ctx.tp_rank != 0) and not getattr(p, "tied_copy", False)
            count[off:off + n] = int(counted)
        return real, decay, count

    def _state_for(self, bucket: Bucket) -> _ShardState:
        real, decay, count = self._flags(bucket)
        model, grad = bucket.param_data, bucket.grad_data
        if self.sync.distributed:
            dp = self.sync.dp
            model, grad, real, decay, count = (bucket.shard(t, dp) for t in (model, grad, real, decay, count))
        elif self.ctx.dp_rank != 0:
            count = torch.zeros_like(count)  # DP replicas hold the same grads: count them once
        # fp32: the parameters are their own masters. bf16/fp16: the master starts as the rounded initial weights
        # (as Megatron-LM), so the weights are always exactly the master rounded.
        master = model if model.dtype == torch.float32 else model.float()
        return _ShardState(bucket, master, grad, torch.zeros_like(master), torch.zeros_like(master),
                           _segments(real * decay), _segments(real * (1 - decay)), _segments(real * count), model)

    @torch.no_grad()
    def copy_masters_to_model(self) -> None:
        """Round the fp32 masters into the bf16/fp16 weights (this rank's shards; `gather_params` shares them)."""
        for s in self.states:
            if s.has_master:
                s.model.copy_(s.master)

    def grad_norm(self, grad_scale: float = 1.0) -> float:
        local = 0.0
        for s in self.states:
            for a, b in s.counted:
                g = s.grad[a:b]
                local += float(torch.dot(g, g))
        total = torch.tensor(local, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.world_group.size > 1:
            self.ctx.world_group.account("all_reduce", 8)
            dist.all_reduce(total, group=self.ctx.world_group.pg)
        return math.sqrt(total.item()) / grad_scale

    @torch.no_grad()
    def step(self, lr: float, grad_scale: float = 1.0) -> tuple[float, bool]:
        """Unscale, clip, update. Returns (grad norm, whether the step was applied — False on inf/NaN grads)."""
        norm = self.grad_norm(grad_scale)
        if not math.isfinite(norm):
            return norm, False
        clip = self.cfg.grad_clip
        coef = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
        self.step_count += 1
        # The fused kernel divides gradients by `grad_scale`: fold loss-scale removal and clipping into it.
        divisor = torch.tensor(grad_scale / coef, dtype=torch.float32, device=self.ctx.device)
        for weight_decay, attr in ((self.cfg.weight_decay, "decay"), (0.0, "no_decay")):
            groups = [(s, a, b) for s in self.states for a, b in getattr(s, attr)]
            if not groups:
                continue
            steps = [torch.tensor(float(self.step_count), device=self.ctx.device) for _ in groups]
            torch._fused_adamw_([s.master[a:b] for s, a, b in groups], [s.grad[a:b] for s, a, b in groups],
                                [s.exp_avg[a:b] for s, a, b in groups], [s.exp_avg_sq[a:b] for s, a, b in groups],
                                [], steps, lr=lr, beta1=self.cfg.beta1, beta2=self.cfg.beta2,
                                weight_decay=weight_decay, eps=self.cfg.eps, amsgrad=False, maximize=False,
                                grad_scale=divisor if divisor.item() != 1.0 else None, found_inf=None)
        self.copy_masters_to_model()
        self.sync.gather_params()
        return norm, True


class DynamicLossScaler:
    """fp16 only: multiply the loss by `scale`; halve on overflow (step skipped), double after `window` good steps."""

    def __init__(self, initial: float, window: int, enabled: bool):
        self.scale = initial if enabled else 1.0
        self.window, self.enabled = window, enabled
        self.good_steps = 0

    def update(self, applied: bool) -> None:
        if not self.enabled:
            return
        if not applied:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps % self.window == 0:
            self.scale *= 2.0
