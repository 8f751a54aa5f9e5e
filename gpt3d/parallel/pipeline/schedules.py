"""Pipeline schedules. Each is one function with named warm-up, steady and cool-down phases.

Notation: p stages, this rank is stage s, m micro-batches, v model chunks per rank (interleaved only). Every
send/receive goes through p2p.exchange, and both neighbours of an exchange call it in the same schedule step.
"""
from __future__ import annotations

from . import p2p
from .runner import StageRunner


def gpipe(r: StageRunner) -> None:
    """All forwards, then all backwards (GPipe): simple, holds activations of all m micro-batches."""
    ctx, spec, m = r.ctx, r.spec, r.num_micro
    first, last = ctx.is_first_stage, ctx.is_last_stage
    for mb in range(m):  # forward phase
        r.mark("gpipe forward", mb)
        received = None if first else p2p.recv_forward(ctx, spec)
        out = r.forward(0, mb, received)
        if not last:
            p2p.send_forward(ctx, spec, out)
    for mb in range(m):  # backward phase
        r.mark("gpipe backward", mb)
        grad = None if last else p2p.recv_backward(ctx, spec)
        grad_in = r.backward(0, mb, grad)
        if not first:
            p2p.send_backward(ctx, spec, grad_in)


def one_f_one_b(r: StageRunner) -> None:
    """1F1B (PipeDream-Flush): at most p - s micro-batches in flight on stage s."""
    ctx, spec, m = r.ctx, r.spec, r.num_micro
    first, last = ctx.is_first_stage, ctx.is_last_stage
    warmup = min(ctx.layout.pp - ctx.pp_rank - 1, m)
    steady = m - warmup

    # Warm-up: forwards only, filling the pipeline.
    for mb in range(warmup):
        r.mark("1f1b warm-up", mb)
        received = None if first else p2p.recv_forward(ctx, spec)
        out = r.forward(0, mb, received)
        if not last:
            p2p.send_forward(ctx, spec, out)

    # Steady state: one forward, one backward.
    r.mark("1f1b steady", warmup)
    received = None if (first or steady == 0) else p2p.recv_forward(ctx, spec)
    for i in range(steady):
        fwd_mb, bwd_mb = warmup + i, i
        r.mark("1f1b steady", fwd_mb)
        out = r.forward(0, fwd_mb, received)
        grad = None if last else p2p.send_forward_recv_backward(ctx, spec, out)
        grad_in = r.backward(0, bwd_mb, grad)
        last_steady = i == steady - 1
        if first:
            received = None
        elif last_steady:
            p2p.send_backward(ctx, spec, grad_in)
            received = None
        else:
            received = p2p.send_backward_recv_forward(ctx, spec, grad_in)

    # Cool-down: the backwards of the warm-up micro-batches.
    for bwd_mb in range(steady, m):
        r.mark("1f1b cool-down", bwd_mb)
        grad = None if last else p2p.recv_backward(ctx, spec)
        grad_in = r.backward(0, bwd_mb, grad)
        if not first:
            p2p.send_backward(ctx, spec, grad_in)


def interleaved_one_f_one_b(r: StageRunner) -> None:
    """Interleaved 1F1B (Narayanan et al. 2021): each rank holds v model chunks; virtual stage c*p + s. Micro-batches
    advance in groups of p through chunk 0, then chunk 1, ...; needs m divisible by p. The bubble shrinks by v."""
    ctx, spec, m, v = r.ctx, r.spec, r.num_micro, r.vp
    p, s = ctx.layout.pp, ctx.pp_rank
    first_rank, last_rank = ctx.is_first_stage, ctx.is_last_stage
    total = m * v

    def chunk_of(k: int, forward: bool) -> int:
        c = (k % (p * v)) // p
        return c if forward else v - 1 - c

    def microbatch_of(k: int) -> int:
        return (k // (p * v)) * p + k % p

    received: list[list] = [[] for _ in range(v)]  # activations received per chunk, in micro-batch order
    grads: list[list] = [[] for _ in range(v)]  # output gradients received per chunk, in micro-batch order

    def forward_k(k: int):
        c, mb = chunk_of(k, True), microbatch_of(k)
        inp = None if r.is_first_virtual(c) else received[c].pop(0)
        out = r.forward(c, mb, inp)
        return out  # None on the last virtual stage (nothing to send)

    def backward_k(k: int):
        c, mb = chunk_of(k, False), microbatch_of(k)
        grad = None if r.is_last_virtual(c) else grads[c].pop(0)
        grad_in = r.backward(c, mb, grad)
        return None if r.is_first_virtual(c) else grad_in

    warmup = min((p - s - 1) * 2 + (v - 1) * p, total)
    steady = total - warmup

    # Warm-up: forwards only.
    r.mark("interleaved warm-up", 0)
    if not first_rank:
        received[0].append(p2p.recv_forward(ctx, spec))
    for k in range(warmup):
        r.mark("interleaved warm-up", k)
        out = forward_k(k)
        next_chunk = chunk_of(k + 1, True)
        recv_prev = not (first_rank and next_chunk == 0) and k != total - 1
        if k == warmup - 1 and steady > 0:
            recv_next = not last_rank
            got_prev, got_next = p2p.exchange(ctx, spec, send_next=out, recv_prev=recv_prev, recv_next=recv_next)
            if recv_next:
                grads[v - 1].append(got_next)
        else:
            got_prev, _ = p2p.exchange(ctx, spec, send_next=out, recv_prev=recv_prev)
        if recv_prev:
            received[next_chunk].append(got_prev)

    # Steady state: one forward and one backward per step, exchanged in one batch.
    for i in range(steady):
        fk, bk = warmup + i, i
        r.mark("interleaved steady", fk)
        out = forward_k(fk)
        grad_in = backward_k(bk)
        if first_rank:
            next_fwd = chunk_of(fk - (p - 1), True)
            recv_prev = next_fwd != v - 1
            next_fwd += 1
        else:
            next_fwd = chunk_of(fk + 1, True)
            recv_prev = True
        if last_rank:
            next_bwd = chunk_of(bk - (p - 1), False)
            recv_next = next_bwd != 0
            next_bwd -= 1
        else:
            next_bwd = chunk_of(bk + 1, False)
            recv_next = True
        if i == steady - 1:
            recv_prev = False
        got_prev, got_next = p2p.exchange(ctx, spec, send_next=out, send_prev=grad_in, recv_prev=recv_prev,
                                          recv_next=recv_next)
        if recv_prev:
            received[next_fwd].append(got_prev)
        if recv_next:
            grads[next_bwd].append(got_next)

    # Cool-down: the remaining backwards.
    r.mark("interleaved cool-down", steady)
    if steady == 0 and not last_rank:
        grads[v - 1].append(p2p.recv_backward(ctx, spec))
    for k in range(steady, total):
        r.mark("interleaved cool-down", k)
        grad_in = backward_k(k)
        next_bwd = chunk_of(k + 1, False)
        recv_next = not (last_rank and next_bwd == v - 1) and k != total - 1
        _, got_next = p2p.exchange(ctx, spec, send_prev=grad_in, recv_next=recv_next)
        if recv_next:
            grads[next_bwd].append(got_next)


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved_one_f_one_b}
