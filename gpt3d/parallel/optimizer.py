"""AdamW over the flat gradient buckets, optionally sharded across data parallel (the distributed optimizer).

Parameters are fp32 and are their own master weights (bf16/fp16 run through autocast). Without the distributed
optimizer every rank updates whole buckets; with it each DP rank updates its shard of every bucket (holding Adam
states only for that shard) and the shards are all-gathered. Both paths run the same per-element arithmetic, so
they produce identical numbers.

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
    bucket: Bucket
    param: torch.Tensor  # view of the bucket's (shard of) parameters
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    decay_mask: torch.Tensor  # 1.0 where weight decay applies
    norm_mask: torch.Tensor  # 1.0 where this rank counts the element in the global norm


class ShardedAdamW:
    def __init__(self, ctx: ParallelContext, sync: GradSynchronizer, cfg: OptimConfig):
        self.ctx, self.sync, self.cfg = ctx, sync, cfg
        self.step_count = 0
        self.states = [self._state_for(b) for b in sync.all_buckets()]

    def _masks(self, bucket: Bucket) -> tuple[torch.Tensor, torch.Tensor]:
        decay = torch.zeros(bucket.padded, device=bucket.grad_data.device)
        count = torch.zeros(bucket.padded, device=bucket.grad_data.device)
        for p, off in zip(bucket.params, bucket.offsets):
            n = p.numel()
            if p.dim() >= 2:
                decay[off:off + n] = 1.0
            replicated_over_tp = getattr(p, "shard", None) is None
            counted = not (replicated_over_tp and self.ctx.tp_rank != 0) and not getattr(p, "tied_copy", False)
            count[off:off + n] = 1.0 if counted else 0.0
        return decay, count

    def _state_for(self, bucket: Bucket) -> _ShardState:
        decay, count = self._masks(bucket)
        if self.sync.distributed:
            dp = self.sync.dp
            views = [bucket.shard(t, dp) for t in (bucket.param_data, bucket.grad_data, decay, count)]
        else:
            views = [bucket.param_data, bucket.grad_data, decay, count]
            if self.ctx.dp_rank != 0:
                views[3] = torch.zeros_like(count)  # DP replicas hold the same grads: count them once
        param, grad, decay, count = views
        return _ShardState(bucket, param, grad, torch.zeros_like(param), torch.zeros_like(param), decay, count)

    def grad_norm(self) -> float:
        local = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for s in self.states:
            local += (s.grad.double() ** 2 * s.norm_mask).sum()
        if self.ctx.world_group.size > 1:
            self.ctx.world_group.account("all_reduce", 8)
            dist.all_reduce(local, group=self.ctx.world_group.pg)
        return math.sqrt(local.item())

    @torch.no_grad()
    def step(self, lr: float, grad_scale: float = 1.0) -> tuple[float, bool]:
        """Unscale, clip, update. Returns (grad norm, whether the step was applied — False on inf/NaN grads)."""
        if grad_scale != 1.0:
            for s in self.states:
                s.grad.div_(grad_scale)
        norm = self.grad_norm()
        if not math.isfinite(norm):
            return norm, False
        clip = self.cfg.grad_clip
        coef = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
        self.step_count += 1
        b1, b2, eps, wd = self.cfg.beta1, self.cfg.beta2, self.cfg.eps, self.cfg.weight_decay
        bc1 = 1.0 - b1 ** self.step_count
        bc2 = 1.0 - b2 ** self.step_count
        for s in self.states:
            g = s.grad * coef if coef != 1.0 else s.grad
            s.exp_avg.mul_(b1).add_(g, alpha=1.0 - b1)
            s.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            if wd > 0:
                s.param.mul_(1.0 - lr * wd * s.decay_mask)
            denom = (s.exp_avg_sq / bc2).sqrt_().add_(eps)
            s.param.addcdiv_(s.exp_avg, denom, value=-lr / bc1)
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
