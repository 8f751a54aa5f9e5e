"""Point-to-point transfers between pipeline ranks: one batch of a schedule's adjacent SEND/RECV actions.

A batch posts all of its sends and receives at once (in the action list's order) and waits only for the receives; the
sends complete in the background and are waited at the end of the step (`wait_sends`), so a sender never blocks on a
receiver that is itself busy sending. Activations and gradients are tagged apart; between two ranks each tag carries
its messages in the schedule's order, which the simulator checks for every schedule (the k-th send meets the k-th
receive).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..context import ParallelContext

ACTIVATION_TAG = 1
GRADIENT_TAG = 2


@dataclass
class P2PShape:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Transfer:
    send: bool
    peer: int  # pp rank
    tag: int
    tensor: torch.Tensor | None = None  # the tensor to send; the received tensor after `exchange`


def exchange(ctx: ParallelContext, spec: P2PShape, transfers: list[Transfer]) -> list:
    """Post `transfers` in one batch; fills each receive's tensor and returns the sends' pending works."""
    group = ctx.pp_group
    ops, nbytes = [], 0
    for t in transfers:
        peer = group.global_rank(t.peer)
        if t.send:
            t.tensor = t.tensor.detach().to(spec.dtype).contiguous()
            nbytes += t.tensor.numel() * t.tensor.element_size()
            ops.append(dist.P2POp(dist.isend, t.tensor, peer, group.pg, tag=t.tag))
        else:
            t.tensor = torch.empty(spec.shape, dtype=spec.dtype, device=ctx.device)
            ops.append(dist.P2POp(dist.irecv, t.tensor, peer, group.pg, tag=t.tag))
    if nbytes:
        group.account("send", nbytes)
    group.current_op = "p2p(" + ", ".join(f"{'send to' if t.send else 'recv from'} pp {t.peer} "
                                          f"{'act' if t.tag == ACTIVATION_TAG else 'grad'}" for t in transfers) + ")"
    works = dist.batch_isend_irecv(ops)
    if len(works) != len(ops):  # a coalesced backend (NCCL) returns one request for the whole batch
        for work in works:
            work.wait()
        return []
    pending = []
    for t, work in zip(transfers, works):
        if t.send:
            pending.append((work, t.tensor))  # keep the sent tensor alive until the send completes
        else:
            work.wait()
    return pending


def wait_sends(pending: list) -> None:
    for work, _ in pending:
        work.wait()
    pending.clear()
