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

from gpt3d.config.optim import OptimConfig

from . import comm
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


def _runs(bucket: Bucket, keep, lo: int, hi: int) -> list[tuple[int, int]]:
    """Maximal runs [start, end), relative to `lo`, of the elements in [lo, hi) that belong to parameters with
    `keep(param)`. Computed from the parameters' offsets: no per-element work (a 175B rank's bucket holds ~1e9)."""
    runs: list[tuple[int, int]] = []
    for p, off in zip(bucket.params, bucket.offsets):
        a, b = max(off, lo), min(off + p.numel(), hi)
        if a >= b or not keep(p):
            continue
        if runs and runs[-1][1] == a - lo:
            runs[-1] = (runs[-1][0], b - lo)
        else:
            runs.append((a - lo, b - lo))
    return runs


class ShardedAdamW:
    def __init__(self, ctx: ParallelContext, sync: GradSynchronizer, cfg: OptimConfig):
        self.ctx, self.sync, self.cfg = ctx, sync, cfg
        self.step_count = 0
        self.states = [self._state_for(b) for b in sync.all_buckets()]

    def _counted(self, p) -> bool:
        """Is this parameter's gradient counted in the global norm on this rank (once across TP and tied copies)."""
        replicated_over_tp = getattr(p, "shard", None) is None
        return not (replicated_over_tp and self.ctx.tp_rank != 0) and not getattr(p, "tied_copy", False)

    def _state_for(self, bucket: Bucket) -> _ShardState:
        model, grad = bucket.param_data, bucket.grad_data
        lo, hi = 0, bucket.padded
        if self.sync.distributed:
            dp = self.sync.dp
            model, grad = bucket.shard(model, dp), bucket.shard(grad, dp)
            lo, hi = dp.rank * (bucket.padded // dp.size), (dp.rank + 1) * (bucket.padded // dp.size)
        # DP replicas hold the same grads: count them once (on DP rank 0) unless each rank owns its shard.
        counted = self._counted if self.sync.distributed or self.ctx.dp_rank == 0 else (lambda p: False)
        # fp32: the parameters are their own masters. bf16/fp16: the master starts as the rounded initial weights
        # (as Megatron-LM), so the weights are always exactly the master rounded.
        master = model if model.dtype == torch.float32 else model.float()
        return _ShardState(bucket, master, grad, torch.zeros_like(master), torch.zeros_like(master),
                           _runs(bucket, lambda p: p.dim() >= 2, lo, hi),  # matrices decay; biases and norms do not
                           _runs(bucket, lambda p: p.dim() < 2, lo, hi), _runs(bucket, counted, lo, hi), model)

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
            comm.reduce_in_place(total, self.ctx.world_group)
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
