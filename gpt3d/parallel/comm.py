"""Collectives on a Group, and the tensor-parallel communication steps (each a small named autograd.Function taking
its group).

The raw collectives (`reduce_in_place`, `reduce_scatter_into`, `gather_into`, `gather_list`) run through the
group's shared memory when it has one (CPU ranks on one host, gpt3d/parallel/shared_memory.py) and through
torch.distributed otherwise; they account nothing. The steps above them return their input unchanged when the group
has one rank, and record the bytes they move on the group (forward and backward) so tests and metrics can compare
them with the analytical volumes. Sequence-parallel functions split/gather along dim 1 (activations are
[batch, seq, hidden]).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .context import Group

SEQ_DIM = 1


class _Completed:
    """The handle of a collective that has already finished (shared-memory collectives run synchronously)."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def _shared_memory(group: Group, *tensors: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM):
    shm = group.shm
    if shm is None or not all(t.is_contiguous() and shm.supported(t, op) for t in tensors):
        return None
    return shm


class _DivideOnWait:
    """The handle of a torch.distributed reduction whose result is then divided (a gradient average): wait() waits,
    then divides once."""

    def __init__(self, work, x: torch.Tensor, divide_by: int):
        self.work, self.x, self.divide_by = work, x, divide_by

    def wait(self, timeout=None) -> bool:
        if self.work is not None:
            self.work.wait()
            self.work = None
            self.x.div_(self.divide_by)
        return True

    def is_completed(self) -> bool:
        return self.work is None


def _divided(work, x: torch.Tensor, divide_by: int, async_op: bool):
    if divide_by == 1:
        return work
    handle = _DivideOnWait(work, x, divide_by)
    if async_op:
        return handle
    handle.wait()
    return None


def reduce_in_place(x: torch.Tensor, group: Group, op: dist.ReduceOp = dist.ReduceOp.SUM, async_op: bool = False,
                    divide_by: int = 1):
    """x = the reduction of every rank's x, divided by `divide_by` (a gradient average: in shared memory, each rank's
    values as they are copied in); with async_op a handle to wait on (already complete in shared memory)."""
    shm = _shared_memory(group, x, op=op)
    if shm is None:
        work = dist.all_reduce(x, op=op, group=group.pg, async_op=async_op)
        return _divided(work if async_op else _Completed(), x, divide_by, async_op)
    shm.all_reduce(x, op, divide_by)
    return _Completed() if async_op else None


def reduce_scatter_into(out: torch.Tensor, x: torch.Tensor, group: Group, async_op: bool = False,
                        divide_by: int = 1):
    """out = the sum over ranks of part `group.rank` of x (x flat in `group.size` equal parts), divided by
    `divide_by`."""
    shm = _shared_memory(group, out, x)
    if shm is None:  # (flat views: gloo wants the output as the input's dim 0 times the group size)
        work = dist.reduce_scatter_tensor(out.view(-1), x.view(-1), group=group.pg, async_op=async_op)
        return _divided(work if async_op else _Completed(), out, divide_by, async_op)
    shm.reduce_scatter_tensor(out, x, divide_by=divide_by)
    return _Completed() if async_op else None


def gather_into(out: torch.Tensor, x: torch.Tensor, group: Group) -> None:
    """out = every rank's x, concatenated in rank order (flat)."""
    shm = _shared_memory(group, out, x)
    if shm is None:
        dist.all_gather_into_tensor(out.view(-1), x.reshape(-1), group=group.pg)
    else:
        shm.all_gather_into_tensor(out, x)


def gather_list(x: torch.Tensor, group: Group) -> list[torch.Tensor]:
    """Every rank's x (same shape and dtype on all), in rank order."""
    x = x.contiguous()
    out = torch.empty((group.size,) + tuple(x.shape), dtype=x.dtype, device=x.device)
    gather_into(out, x, group)
    return list(out.unbind(0))


def all_reduce(x: torch.Tensor, group: Group, op_name: str = "all_reduce",
               op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place reduction over the group. Accounting counts the tensor's bytes once per all-reduce (the algorithm's
    wire traffic, 2 (n-1)/n of that for a ring, is a property of the library, not of the model)."""
    if group.size == 1:
        return x
    group.account(op_name, x.numel() * x.element_size())
    reduce_in_place(x, group, op)
    return x


def start_all_reduce(x: torch.Tensor, group: Group, op_name: str = "all_reduce"):
    """Start an in-place sum over the group (group.size > 1) and return its handle: the caller overlaps work, then
    calls .wait(). Accounted as all_reduce."""
    group.account(op_name, x.numel() * x.element_size())
    return reduce_in_place(x, group, async_op=True)


def _all_gather_dim(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    group.account("all_gather", x.numel() * x.element_size() * group.size)
    return torch.cat(gather_list(x, group), dim=dim)


def _reduce_scatter_dim(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    parts = x.chunk(group.size, dim=dim)
    out = torch.empty_like(parts[group.rank], memory_format=torch.contiguous_format)
    group.account("reduce_scatter", x.numel() * x.element_size())
    reduce_scatter_into(out, torch.stack(parts) if dim else x.contiguous(), group)
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
