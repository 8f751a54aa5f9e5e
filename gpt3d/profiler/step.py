"""Profile one training step of a Trainer: install the layer wrappers and the communication timers, run
`trainer.train_step`, remove them, and return what was measured on this rank (times relative to the step's start)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gpt3d.train.trainer import StepResult, Trainer

from .clock import FORWARD, SegmentClock
from .comm_timing import COMM_GROUPS, CommLog, CommTimer
from .segments import Instrumentation, SavedBytes, Segment, build_segments


@dataclass
class StepProfile:
    """One rank, one step. Times in seconds; instants relative to the call of train_step."""
    seconds: float
    busy_s: float  # forward + backward of the pipeline schedule (StageRunner)
    window: tuple[float, float]  # the pipeline schedule: from the end of zero_grad to the start of gradient sync
    events: list[tuple[str, int, int, float, float]]  # StageRunner (kind, chunk, mb, start, end)
    segment_s: list[list[float]]  # [segment][forward, backward, recompute]
    saved_bytes: list[int]  # activation bytes saved for backward per segment, summed over the step's micro-batches
    forwards: list[int]  # training forwards per chunk
    optimizer_s: float  # exclusive of its collectives
    comm: CommLog
    comm_bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> op -> bytes


class TrainerProfiler:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        ctx = trainer.ctx
        L = ctx.layout
        self.segments: list[Segment] = build_segments(trainer.cfg, trainer.chunks, ctx.pp_rank, L.pp, L.tp, L.dp,
                                                      trainer.rt.num_micro)
        n = len(self.segments)
        self.comm_seg = {g: n + k for k, g in enumerate(COMM_GROUPS)}
        self.optimizer_seg = n + len(COMM_GROUPS)
        self.clock = SegmentClock(self.optimizer_seg + 1, ctx.device)
        params = [p for chunk in trainer.chunks for p in chunk.parameters()]
        self.saved = SavedBytes(self.clock, self.optimizer_seg + 1, params)
        self.instrumentation = Instrumentation(trainer.chunks, self.segments, self.clock, self.saved)
        self.comm = CommTimer(self.clock, ctx, self.comm_seg, n)
        self._overrides: list[tuple[object, str]] = []
        self._window = [0.0, 0.0]

    # -- trainer hooks (instance attributes, removed after the step) -----------------------------------------------
    def _override(self, obj: object, attr: str, make: Callable[[Callable], Callable]) -> None:
        if attr in obj.__dict__:
            raise RuntimeError(f"profiler: {type(obj).__name__}.{attr} is already overridden; another profiler is "
                               f"attached")
        setattr(obj, attr, make(getattr(obj, attr)))
        self._overrides.append((obj, attr))

    def _attach_trainer(self) -> None:
        trainer, comm, clock, window = self.trainer, self.comm, self.clock, self._window

        def zero_grad(original):
            def wrapper():
                original()
                window[0] = time.perf_counter()  # the schedule starts right after (Trainer.train_step)
            return wrapper

        def finish(original):
            def wrapper():
                window[1] = time.perf_counter()  # the schedule has just ended
                return original()
            return wrapper

        def preferring(*groups):
            def make(original):
                def wrapper(*args, **kwargs):
                    with comm.prefer(*groups):
                        return original(*args, **kwargs)
                return wrapper
            return make

        def optimizer_step(original):
            seg = self.optimizer_seg

            def wrapper(*args, **kwargs):
                clock.push(seg, FORWARD)
                try:
                    return original(*args, **kwargs)
                finally:
                    clock.pop(seg)
            return wrapper

        self._override(trainer.sync, "zero_grad", zero_grad)
        self._override(trainer.sync, "finish", finish)
        self._override(trainer.sync, "_model_parallel_reductions", preferring("embedding", "tp"))
        self._override(trainer, "mean_loss", preferring("world"))
        self._override(trainer.optimizer, "grad_norm", preferring("world"))
        self._override(trainer.optimizer, "step", optimizer_step)

    def _detach(self) -> None:
        for obj, attr in reversed(self._overrides):
            delattr(obj, attr)
        self._overrides.clear()
        self.instrumentation.remove()

    @contextlib.contextmanager
    def attached(self):
        try:
            self.instrumentation.install()
            self._attach_trainer()
            with self.comm.patched():
                yield
        finally:
            self._detach()

    # -- one step -------------------------------------------------------------------------------------------------
    def profile_step(self, samples: np.ndarray) -> tuple[StepResult, StepProfile]:
        trainer = self.trainer
        with self.attached():
            t0 = time.perf_counter()
            result = trainer.train_step(samples)
        segment_totals = self.clock.collect()
        log = self.comm.collect()
        for r in log.records:
            r.start -= t0
            r.end -= t0
        for a in log.asyncs:
            a.launched -= t0
            a.completed = None if a.completed is None else a.completed - t0
            a.wait_end = None if a.wait_end is None else a.wait_end - t0
        events = [(k, c, mb, s - t0, e - t0) for k, c, mb, s, e in trainer.last_runner.events]
        n = len(self.segments)
        ctx = trainer.ctx
        comm_bytes = {g.name: dict(g.bytes_moved) for g in ctx.groups()}
        comm_bytes["world"] = {"all_reduce": log.world_bytes} if log.world_bytes else {}
        profile = StepProfile(
            seconds=result.seconds, busy_s=result.busy_s, window=(self._window[0] - t0, self._window[1] - t0),
            events=events, segment_s=segment_totals[:n], saved_bytes=self.saved.collect()[:n],
            forwards=self.instrumentation.collect_forwards(), optimizer_s=sum(segment_totals[self.optimizer_seg]),
            comm=log, comm_bytes=comm_bytes)
        return result, profile
