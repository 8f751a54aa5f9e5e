"""Tensor-parallel communication steps, each a small named autograd.Function taking its group.

Every function returns its input unchanged when the group has one rank, and records the bytes it moves on the group
(forward and backward) so tests and metrics can compare them with the analytical volumes. Sequence-parallel
functions split/gather along dim 1 (activations are [batch, seq, hidden]).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .context import Group

SEQ_DIM = 1


def all_reduce(x: torch.Tensor, group: Group, op_name: str = "all_reduce",
               op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place reduction over the group. Accounting counts the tensor's bytes once per all-reduce (the algorithm's
    wire traffic, 2 (n-1)/n of that for a ring, is a property of the library, not of the model)."""
    if group.size == 1:
        return x
    group.account(op_name, x.numel() * x.element_size())
    dist.all_reduce(x, op=op, group=group.pg)
    return x


def start_all_reduce(x: torch.Tensor, group: Group, op_name: str = "all_reduce"):
    """Start an in-place sum over the group (group.size > 1) and return its handle: the caller overlaps work, then
    calls .wait(). Accounted as all_reduce."""
    group.account(op_name, x.numel() * x.element_size())
    return dist.all_reduce(x, group=group.pg, async_op=True)


def _all_gather_dim(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(group.size)]
    group.account("all_gather", x.numel() * x.element_size() * group.size)
    dist.all_gather(parts, x, group=group.pg)
    return torch.cat(parts, dim=dim)


def _reduce_scatter_dim(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    parts = [p.contiguous() for p in x.chunk(group.size, dim=dim)]
    out = torch.empty_like(parts[group.rank])
    group.account("reduce_scatter", x.numel() * x.element_size())
    dist.reduce_scatter(out, parts, group=group.pg)
    return out


class CopyToTensorParallel(torch.autograd.Function):
    """Entering a column-parallel region: identity forward, sum of the ranks' input gradients backward."""

    @staticmethod
    def forward(ctx, x, group: Group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad.contiguous().clone(), ctx.group), None


class ReduceFromTensorParallel(torch.autograd.Function):
    """Leaving a row-parallel region: sum of the partial outputs forward, identity backward."""

    @staticmethod
    def forward(ctx, x, group: Group):
        return all_reduce(x.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class GatherFromSequenceParallel(torch.autograd.Function):
    """Sequence-sharded -> full sequence before a column-parallel GEMM: all-gather forward, reduce-scatter backward."""

    @staticmethod
    def forward(ctx, x, group: Group):
        ctx.group = group
        return _all_gather_dim(x, group, SEQ_DIM)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_dim(grad, ctx.group, SEQ_DIM), None


class ReduceScatterToSequenceParallel(torch.autograd.Function):
    """Row-parallel partial sums -> this rank's sequence shard of the sum: reduce-scatter forward, all-gather backward."""

    @staticmethod
    def forward(ctx, x, group: Group):
        ctx.group = group
        return _reduce_scatter_dim(x, group, SEQ_DIM)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_dim(grad, ctx.group, SEQ_DIM), None


class ScatterToSequenceParallel(torch.autograd.Function):
    """Replicated full sequence -> this rank's shard (no communication); all-gather backward."""

    @staticmethod
    def forward(ctx, x, group: Group):
        ctx.group = group
        return x.chunk(group.size, dim=SEQ_DIM)[group.rank].contiguous()

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_dim(grad, ctx.group, SEQ_DIM), None


def copy_to_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    return x if group.size == 1 else CopyToTensorParallel.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    return x if group.size == 1 else ReduceFromTensorParallel.apply(x, group)


def gather_from_sp(x: torch.Tensor, group: Group) -> torch.Tensor:
    return x if group.size == 1 else GatherFromSequenceParallel.apply(x, group)


def reduce_scatter_to_sp(x: torch.Tensor, group: Group) -> torch.Tensor:
    return x if group.size == 1 else ReduceScatterToSequenceParallel.apply(x, group)


def scatter_to_sp(x: torch.Tensor, group: Group) -> torch.Tensor:
    return x if group.size == 1 else ScatterToSequenceParallel.apply(x, group)
