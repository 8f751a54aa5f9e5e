"""Exclusive time per (segment, phase): a stack of open segments; every transition charges the time since the previous
transition to the segment on top. Nested segments therefore never double count, and every instant inside an
instrumented region belongs to exactly one segment (communication is a segment too, so layers exclude it).

Forward: the module wrappers push/pop around the call. Backward: a pair of identity autograd functions around the
module, `Exit` on its output (its backward runs first: push) and `Enter` on its input (its backward runs once the
module's backward is complete: pop). A forward wrapper that runs while a backward segment is open is recomputation
(activation checkpointing re-runs the forward inside backward) and is charged to the RECOMPUTE phase.

On CPU transitions read perf_counter. On CUDA each transition records an event; `collect` synchronises once per step
and charges the elapsed time between consecutive events, so GPU kernels, not their launches, are measured.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

FORWARD, BACKWARD, RECOMPUTE = 0, 1, 2
PHASES = ("forward", "backward", "recompute")


class SegmentClock:
    def __init__(self, n_segments: int, device: torch.device):
        self.n = n_segments
        self.cuda = device.type == "cuda"
        self.totals = [[0.0, 0.0, 0.0] for _ in range(n_segments)]
        self.stack: list[tuple[int, int]] = []
        self.last = 0.0
        self._events: list[tuple[object, Optional[tuple[int, int]]]] = []  # CUDA: (event, key charged until it)

    # -- transitions ----------------------------------------------------------------------------------------------
    def _mark(self) -> None:
        top = self.stack[-1] if self.stack else None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append((event, top))
            return
        now = time.perf_counter()
        if top is not None:
            self.totals[top[0]][top[1]] += now - self.last
        self.last = now

    def push(self, seg: int, phase: int) -> None:
        self._mark()
        self.stack.append((seg, phase))

    def pop(self, seg: int) -> None:
        """Close the innermost open `seg` (and anything left open above it, e.g. after an exception)."""
        if not any(s == seg for s, _ in self.stack):
            return
        self._mark()
        while self.stack:
            if self.stack.pop()[0] == seg:
                break

    def forward_phase(self) -> int:
        return RECOMPUTE if self.stack and self.stack[-1][1] != FORWARD else FORWARD

    def end_backward(self) -> None:
        """End of an autograd backward pass: close whatever backward segment is still open (e.g. the embedding, whose
        input has no gradient and hence no Enter node)."""
        if self.stack:
            self._mark()
            self.stack.clear()

    # -- per step -------------------------------------------------------------------------------------------------
    def collect(self) -> list[list[float]]:
        """Totals of this step (seconds per segment per phase), and reset for the next one."""
        if self.cuda and self._events:
            torch.cuda.synchronize()
            for (event, _), (next_event, key) in zip(self._events, self._events[1:]):
                if key is not None:
                    self.totals[key[0]][key[1]] += event.elapsed_time(next_event) / 1e3
        self._events = []
        self.stack.clear()
        out, self.totals = self.totals, [[0.0, 0.0, 0.0] for _ in range(self.n)]
        return out


def _queue_end_of_backward(clock: SegmentClock) -> None:
    torch.autograd.Variable._execution_engine.queue_callback(clock.end_backward)


class Exit(torch.autograd.Function):
    """Identity on a module's output; its backward opens the module's backward segment."""

    @staticmethod
    def forward(ctx, clock: SegmentClock, seg: int, x: torch.Tensor) -> torch.Tensor:
        ctx.clock, ctx.seg = clock, seg
        return x

    @staticmethod
    def backward(ctx, grad):
        clock = ctx.clock
        if not clock.stack:  # outermost segment of this backward pass: close everything when the pass ends
            _queue_end_of_backward(clock)
        clock.push(ctx.seg, BACKWARD)
        return None, None, grad


class Enter(torch.autograd.Function):
    """Identity on a module's tensor inputs; its backward (after the module's) closes the module's backward segment."""

    @staticmethod
    def forward(ctx, clock: SegmentClock, seg: int, *xs: torch.Tensor):
        ctx.clock, ctx.seg = clock, seg
        return xs if len(xs) > 1 else xs[0]

    @staticmethod
    def backward(ctx, *grads):
        ctx.clock.pop(ctx.seg)
        return (None, None, *grads)
