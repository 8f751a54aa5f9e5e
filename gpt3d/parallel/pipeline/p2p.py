"""Point-to-point transfers between neighbouring pipeline stages.

Every exchange posts all of its sends and receives in one batch (fixed order: activations, then gradients),
so two neighbours that exchange in the same schedule step can never wait on each other. Between any pair of ranks,
each direction carries one kind of tensor (activations forward, gradients backward) in the schedule's order, so the
k-th send always meets the k-th receive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..context import ParallelContext


ACTIVATION_TAG = 1
GRADIENT_TAG = 2


@dataclass
class P2PShape:
    shape: tuple[int, ...]
    dtype: torch.dtype


def exchange(ctx: ParallelContext, spec: P2PShape, send_next: Optional[torch.Tensor] = None,
             send_prev: Optional[torch.Tensor] = None, recv_prev: bool = False,
             recv_next: bool = False) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One batched step: returns (tensor received from the previous stage, tensor received from the next stage).
    Previous/next wrap around the ring (the interleaved schedule sends from the last rank to the first)."""
    group = ctx.pp_group
    if group.size == 1:
        return None, None
    prev_rank = group.global_rank((group.rank - 1) % group.size)
    next_rank = group.global_rank((group.rank + 1) % group.size)
    ops, from_prev, from_next = [], None, None
    nbytes = 0
    # Activations (travelling to the next stage) before gradients (travelling back), tagged apart: when the previous
    # and the next stage are the same rank (pp=2, interleaved), both sides then post their messages in one order.
    if send_next is not None:
        send_next = send_next.detach().to(spec.dtype).contiguous()
        ops.append(dist.P2POp(dist.isend, send_next, next_rank, group.pg, tag=ACTIVATION_TAG))
        nbytes += send_next.numel() * send_next.element_size()
    if recv_prev:
        from_prev = torch.empty(spec.shape, dtype=spec.dtype, device=ctx.device)
        ops.append(dist.P2POp(dist.irecv, from_prev, prev_rank, group.pg, tag=ACTIVATION_TAG))
    if send_prev is not None:
        send_prev = send_prev.detach().to(spec.dtype).contiguous()
        ops.append(dist.P2POp(dist.isend, send_prev, prev_rank, group.pg, tag=GRADIENT_TAG))
        nbytes += send_prev.numel() * send_prev.element_size()
    if recv_next:
        from_next = torch.empty(spec.shape, dtype=spec.dtype, device=ctx.device)
        ops.append(dist.P2POp(dist.irecv, from_next, next_rank, group.pg, tag=GRADIENT_TAG))
    if not ops:
        return None, None
    if nbytes:
        group.account("send", nbytes)
    group.current_op = f"p2p(send_next={send_next is not None}, send_prev={send_prev is not None}, " \
                       f"recv_prev={recv_prev}, recv_next={recv_next})"
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    if from_prev is not None:
        from_prev.requires_grad_(True)
    return from_prev, from_next


def recv_forward(ctx, spec):
    return exchange(ctx, spec, recv_prev=True)[0]


def send_forward(ctx, spec, output):
    exchange(ctx, spec, send_next=output)


def recv_backward(ctx, spec):
    return exchange(ctx, spec, recv_next=True)[1]


def send_backward(ctx, spec, grad):
    exchange(ctx, spec, send_prev=grad)


def send_forward_recv_backward(ctx, spec, output, recv: bool = True):
    return exchange(ctx, spec, send_next=output, recv_next=recv)[1]


def send_backward_recv_forward(ctx, spec, grad, recv: bool = True):
    return exchange(ctx, spec, send_prev=grad, recv_prev=recv)[0]
