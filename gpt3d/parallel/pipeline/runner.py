"""The one pipeline runtime: executes this rank's action list of any schedule (actions.py).

F(chunk, mb) runs the chunk on the micro-batch (its input: tokens on virtual stage 0, else an activation received or
handed over by a local chunk); B(chunk, mb) back-propagates the kept output (the loss, scaled by 1/m, on the last
virtual stage); W(chunk, mb) adds the weight gradients its B deferred (zero-bubble schedules). A run of adjacent
SEND/RECV actions is one p2p batch; tensors passed between two chunks of the same rank never leave the process.
The gradient synchroniser is told before the last B of a chunk (and before its last W when the backward is split), so
data-parallel bucket reduction overlaps the rest of the backward.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import torch

from ..context import ParallelContext
from ..weight_grad import WeightGradStore
from . import p2p
from .actions import COMM, Action, Schedule, batches
from .p2p import P2PShape, Transfer


class StageRunner:
    def __init__(self, ctx: ParallelContext, chunks: list[torch.nn.Module], inputs: list[torch.Tensor],
                 labels: list[torch.Tensor], spec: P2PShape, on_last_backward: Callable[[int], None],
                 loss_scale: float = 1.0, weight_grads: Optional[WeightGradStore] = None,
                 on_last_weight: Callable[[int], None] = lambda chunk: None,
                 stage_kwargs: Optional[list[dict]] = None):
        self.ctx = ctx
        self.stage_kwargs = stage_kwargs  # per micro-batch keywords of every chunk's forward (packed layouts)
        self.chunks = chunks
        self.inputs, self.labels = inputs, labels
        self.num_micro = len(labels) if labels else len(inputs)
        self.spec = spec
        self.on_last_backward, self.on_last_weight = on_last_backward, on_last_weight
        self.loss_scale = loss_scale
        self.weight_grads = weight_grads
        self.saved: dict[tuple[int, int], tuple[Optional[torch.Tensor], torch.Tensor]] = {}
        self.activations: dict[tuple[int, int], torch.Tensor] = {}  # stage inputs, keyed by (chunk, mb)
        self.grads: dict[tuple[int, int], torch.Tensor] = {}  # output gradients, keyed by (chunk, mb)
        self.outbox: dict[tuple[str, int, int], torch.Tensor] = {}  # tensors waiting for their SEND
        self.losses: list[torch.Tensor] = []
        self.busy_s = 0.0
        self.comm_s = 0.0  # time spent posting transfers and waiting for receives
        self.events: list[tuple[str, int, int, float, float]] = []  # (kind, chunk, mb, start, end) for timelines
        self.transfers: list[tuple[int, float, float]] = []  # (number of transfers, start, end) per p2p batch
        self.schedule: Optional[Schedule] = None

    # -- placement ------------------------------------------------------------------------------------------------
    def stage_of(self, chunk: int) -> int:
        return self.schedule.placement[self.ctx.pp_rank][chunk]

    def is_first_virtual(self, chunk: int) -> bool:
        return self.stage_of(chunk) == 0

    def is_last_virtual(self, chunk: int) -> bool:
        return self.stage_of(chunk) == self.schedule.num_stages - 1

    def _local(self, stage: int) -> Optional[int]:
        """The local chunk holding virtual stage `stage`, or None when another rank holds it."""
        chunks = self.schedule.placement[self.ctx.pp_rank]
        return chunks.index(stage) if stage in chunks else None

    # -- running a schedule ---------------------------------------------------------------------------------------
    def run(self, schedule: Schedule) -> None:
        assert schedule.num_micro == self.num_micro and schedule.vp == len(self.chunks), \
            f"schedule for {schedule.num_micro} micro-batches x {schedule.vp} chunks, runner has " \
            f"{self.num_micro} x {len(self.chunks)}"
        self.schedule = schedule
        backwards, weights = [0] * len(self.chunks), [0] * len(self.chunks)
        pending: list = []
        for i, step in enumerate(batches(schedule.actions[self.ctx.pp_rank])):
            self.ctx.schedule_step = f"{schedule.name} step {i}: {' '.join(str(a) for a in step)}"
            a = step[0]
            if a.kind in COMM:
                pending += self._transfer(step)
            elif a.kind == "F":
                self.forward(a.chunk, a.mb)
            elif a.kind == "B":
                if backwards[a.chunk] == self.num_micro - 1:
                    self.on_last_backward(a.chunk)
                backwards[a.chunk] += 1
                self.backward(a.chunk, a.mb, split=schedule.split_backward)
            else:
                if weights[a.chunk] == self.num_micro - 1:
                    self.on_last_weight(a.chunk)
                weights[a.chunk] += 1
                self.weight(a.chunk, a.mb)
        p2p.wait_sends(pending)
        assert not self.saved and not self.outbox, "schedule left work undone"

    def _transfer(self, step: list[Action]) -> list:
        start = time.perf_counter()
        transfers = []
        for a in step:
            tag = p2p.ACTIVATION_TAG if a.kind.endswith("F") else p2p.GRADIENT_TAG
            tensor = self.outbox.pop((a.kind[-1], a.chunk, a.mb)) if a.kind.startswith("SEND") else None
            transfers.append(Transfer(a.kind.startswith("SEND"), a.peer, tag, tensor))
        pending = p2p.exchange(self.ctx, self.spec, transfers)
        for a, t in zip(step, transfers):
            if a.kind == "RECV_F":
                self.activations[(a.chunk, a.mb)] = t.tensor.requires_grad_(True)
            elif a.kind == "RECV_B":
                self.grads[(a.chunk, a.mb)] = t.tensor
        end = time.perf_counter()
        self.comm_s += end - start
        self.transfers.append((len(step), start, end))
        return pending

    # -- compute ----------------------------------------------------------------------------------------------------
    def forward(self, chunk: int, mb: int) -> None:
        start = time.perf_counter()
        model = self.chunks[chunk]
        last = self.is_last_virtual(chunk)
        kwargs = self.stage_kwargs[mb] if self.stage_kwargs else {}
        if self.is_first_virtual(chunk):
            stage_input = None
            out = model(self.inputs[mb], self.labels[mb] if last else None, **kwargs)
        else:
            stage_input = self.activations.pop((chunk, mb))
            out = model(stage_input, self.labels[mb] if last else None, **kwargs)
        if last:
            self.losses.append(out.detach())
            out = out.float() * (self.loss_scale / self.num_micro)
        elif (local := self._local(self.stage_of(chunk) + 1)) is not None:
            self.activations[(local, mb)] = out.detach().requires_grad_(True)
        else:
            self.outbox[("F", chunk, mb)] = out
        if torch.is_grad_enabled() and (self.schedule.backward):
            self.saved[(chunk, mb)] = (stage_input, out)
        end = time.perf_counter()
        self.busy_s += end - start
        self.events.append(("F", chunk, mb, start, end))

    def backward(self, chunk: int, mb: int, split: bool) -> None:
        """Input gradient of (chunk, mb), and the weight gradients too unless the schedule splits them off."""
        start = time.perf_counter()
        stage_input, out = self.saved.pop((chunk, mb))
        capture = self.weight_grads.capture((chunk, mb)) if split else contextlib.nullcontext()
        with capture:
            if self.is_last_virtual(chunk):
                torch.autograd.backward(out)
            else:
                torch.autograd.backward(out, grad_tensors=self.grads.pop((chunk, mb)))
        if stage_input is not None:
            previous = self._local(self.stage_of(chunk) - 1)
            if previous is not None:
                self.grads[(previous, mb)] = stage_input.grad
            else:
                self.outbox[("B", chunk, mb)] = stage_input.grad
        end = time.perf_counter()
        self.busy_s += end - start
        self.events.append(("B", chunk, mb, start, end))

    def weight(self, chunk: int, mb: int) -> None:
        start = time.perf_counter()
        self.weight_grads.flush((chunk, mb))
        end = time.perf_counter()
        self.busy_s += end - start
        self.events.append(("W", chunk, mb, start, end))
