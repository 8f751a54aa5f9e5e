"""What a pipeline schedule drives on one rank: forward and backward of (model chunk, micro-batch) pairs.

The runner keeps each micro-batch's stage input and output until its backward, frees the output's storage as soon as
it has been sent (only the autograd graph is needed), scales each micro-batch loss by 1/m, and tells the gradient
synchroniser when a chunk starts its last backward (data-parallel reduction overlaps that backward).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from ..context import ParallelContext
from .p2p import P2PShape


class StageRunner:
    def __init__(self, ctx: ParallelContext, chunks: list[torch.nn.Module], inputs: list[torch.Tensor],
                 labels: list[torch.Tensor], spec: P2PShape, on_last_backward: Callable[[int], None],
                 loss_scale: float = 1.0, stage_kwargs: Optional[list[dict]] = None):
        self.ctx = ctx
        self.stage_kwargs = stage_kwargs  # per micro-batch keywords of every chunk's forward (packed layouts)
        self.chunks = chunks
        self.inputs, self.labels = inputs, labels
        self.num_micro = len(labels) if labels else len(inputs)
        self.spec = spec
        self.on_last_backward = on_last_backward
        self.loss_scale = loss_scale
        self.saved: dict[tuple[int, int], tuple[Optional[torch.Tensor], torch.Tensor]] = {}
        self.losses: list[torch.Tensor] = []
        self.busy_s = 0.0
        self.events: list[tuple[str, int, int, float, float]] = []  # (kind, chunk, mb, start, end) for timelines

    @property
    def vp(self) -> int:
        return len(self.chunks)

    def is_first_virtual(self, chunk: int) -> bool:
        return self.ctx.is_first_stage and chunk == 0

    def is_last_virtual(self, chunk: int) -> bool:
        return self.ctx.is_last_stage and chunk == self.vp - 1

    def forward(self, chunk: int, mb: int, received: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Run the chunk on micro-batch `mb`; returns the activation to send (None on the last virtual stage)."""
        start = time.perf_counter()
        model = self.chunks[chunk]
        kwargs = self.stage_kwargs[mb] if self.stage_kwargs else {}
        if self.is_first_virtual(chunk):
            stage_input = None
            out = model(self.inputs[mb], self.labels[mb] if self.is_last_virtual(chunk) else None, **kwargs)
        else:
            assert received is not None, f"chunk {chunk} micro-batch {mb}: no activation received"
            stage_input = received
            out = model(received, self.labels[mb] if self.is_last_virtual(chunk) else None, **kwargs)
        if self.is_last_virtual(chunk):
            self.losses.append(out.detach())
            out = out.float() * (self.loss_scale / self.num_micro)
        self.saved[(chunk, mb)] = (stage_input, out)
        end = time.perf_counter()
        self.busy_s += end - start
        self.events.append(("F", chunk, mb, start, end))
        return None if self.is_last_virtual(chunk) else out

    def backward(self, chunk: int, mb: int, grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Backward of (chunk, mb); returns the gradient of the stage input to send back (None on the first)."""
        start = time.perf_counter()
        if mb == self.num_micro - 1:
            self.on_last_backward(chunk)
        stage_input, out = self.saved.pop((chunk, mb))
        if self.is_last_virtual(chunk):
            torch.autograd.backward(out)
        else:
            assert grad is not None, f"chunk {chunk} micro-batch {mb}: no gradient received"
            torch.autograd.backward(out, grad_tensors=grad)
        result = None if stage_input is None else stage_input.grad
        end = time.perf_counter()
        self.busy_s += end - start
        self.events.append(("B", chunk, mb, start, end))
        return result

    def mark(self, phase: str, step: int) -> None:
        self.ctx.schedule_step = f"{phase} step {step}"
