"""Timing of every collective and point-to-point transfer, by wrapping torch.distributed's functions, and the
collectives of the groups' shared-memory buffers, for the duration of a profiled step only (the profiler's own
instrumentation; outside `patched()` both are untouched).

Each call is a segment of the SegmentClock (so a layer's time excludes the collectives inside it) and a record
(group, start, end, whether a layer was running). Asynchronous work (the data-parallel bucket all-reduces launched
during backward) is wrapped: the time blocked in `wait()` is exposed communication, and the completion time reported by
the work's future gives the part that overlapped with compute.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Optional

import torch.distributed as dist

from .clock import FORWARD, SegmentClock

COMM_GROUPS = ("tp", "dp", "pp", "embedding", "world")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "reduce_scatter_tensor", "all_gather_into_tensor",
               "broadcast", "all_to_all_single")
SHARED_MEMORY_COLLECTIVES = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor")


@dataclass
class CommRecord:
    group: str
    start: float
    end: float
    inside_layer: bool  # a layer segment was open (TP collectives, DP launches from backward hooks)
    kind: str = "call"  # call (blocking), launch (of asynchronous work), wait (on asynchronous work)


@dataclass
class AsyncRecord:
    group: str
    launched: float
    completed: Optional[float] = None  # from the work's future; None when the backend gives no future
    waited: float = 0.0  # time blocked in wait()
    wait_end: Optional[float] = None


@dataclass
class CommLog:
    records: list[CommRecord] = field(default_factory=list)
    asyncs: list[AsyncRecord] = field(default_factory=list)
    world_bytes: int = 0


class _TimedWork:
    """A torch.distributed Work whose wait() is timed; everything else is delegated."""

    def __init__(self, timer: "CommTimer", group: str, work, record: Optional[AsyncRecord]):
        self._timer, self._group, self._work, self._record = timer, group, work, record
        if record is not None:
            try:
                work.get_future().then(self._done)
            except (RuntimeError, AttributeError):  # backend without futures for this op
                pass

    def _done(self, fut):
        self._record.completed = time.perf_counter()

    def wait(self, *args, **kwargs):
        start = time.perf_counter()
        out = self._timer.timed(self._group, self._work.wait, *args, _comm_kind="wait", **kwargs)
        if self._record is not None:
            self._record.waited += time.perf_counter() - start
            self._record.wait_end = time.perf_counter()
        return out

    def __getattr__(self, name):
        return getattr(self._work, name)


class CommTimer:
    def __init__(self, clock: SegmentClock, ctx, seg_of_group: dict[str, int], layer_segments: int):
        self.clock, self.ctx, self.seg_of_group = clock, ctx, seg_of_group
        self.layer_segments = layer_segments  # segment ids below this are layers (the rest: comm, optimizer)
        self.groups = {"tp": ctx.tp_group, "dp": ctx.dp_group, "pp": ctx.pp_group,
                       "embedding": ctx.embedding_group, "world": ctx.world_group}
        self.preferred: list[str] = []
        self.log = CommLog()
        self._signatures: dict[str, inspect.Signature] = {}

    # -- which group ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def prefer(self, *names: str):
        """Attribute collectives to these groups first: groups that span the same ranks share one process group
        (e.g. pp=2 alone: pp, embedding and world are all WORLD), so the caller says which one it means."""
        previous = self.preferred
        self.preferred = list(names)
        try:
            yield
        finally:
            self.preferred = previous

    def group_name(self, pg) -> str:
        if pg is None:
            pg = dist.group.WORLD
        for name in (*self.preferred, *COMM_GROUPS):
            group = self.groups[name]
            if group.pg is not None and group.pg is pg:
                return name
        return "world"

    # -- timing --------------------------------------------------------------------------------------------------
    def timed(self, group: str, fn, /, *args, _comm_kind: str = "call", **kwargs):
        """fn(*args, **kwargs) as a communication segment of `group` (kwargs may hold the collective's own `group`)."""
        kind = _comm_kind
        clock = self.clock
        inside = any(seg < self.layer_segments for seg, _ in clock.stack)
        start = time.perf_counter()
        seg = self.seg_of_group[group]
        clock.push(seg, FORWARD)
        try:
            return fn(*args, **kwargs)
        finally:
            clock.pop(seg)
            self.log.records.append(CommRecord(group, start, time.perf_counter(), inside, kind))

    def _collective(self, name: str, original):
        signature = inspect.signature(original)

        def patched(*args, **kwargs):
            bound = signature.bind_partial(*args, **kwargs)
            group = self.group_name(bound.arguments.get("group"))
            async_op = bool(bound.arguments.get("async_op", False))
            if group == "world":
                tensor = bound.arguments.get("tensor")
                if tensor is not None and hasattr(tensor, "numel"):
                    self.log.world_bytes += tensor.numel() * tensor.element_size()
            launched = time.perf_counter()
            work = self.timed(group, original, *args, _comm_kind="launch" if async_op else "call", **kwargs)
            if async_op and work is not None:
                record = AsyncRecord(group, launched)
                self.log.asyncs.append(record)
                return _TimedWork(self, group, work, record)
            return work

        return patched

    def _batch_isend_irecv(self, original):
        def patched(p2p_op_list):
            group = self.group_name(getattr(p2p_op_list[0], "group", None)) if p2p_op_list else "pp"
            if group in ("world", "embedding"):  # point-to-point traffic in gpt3d is the pipeline's
                group = "pp"
            works = self.timed(group, original, p2p_op_list, _comm_kind="launch")
            return [_TimedWork(self, group, w, None) for w in works]

        return patched

    def _shared_memory(self, group: str, method: str, original):
        """A collective of a group's shared-memory buffer (gpt3d/parallel/shared_memory.py): always blocking."""
        def patched(*args, **kwargs):
            if group == "world" and method == "all_reduce":
                self.log.world_bytes += args[0].numel() * args[0].element_size()
            return self.timed(group, original, *args, **kwargs)

        return patched

    @contextlib.contextmanager
    def patched(self):
        originals = {name: getattr(dist, name) for name in (*COLLECTIVES, "batch_isend_irecv") if hasattr(dist, name)}
        shared = []  # (buffer, method): instance attributes shadowing the class's methods while profiling
        try:
            for name, original in originals.items():
                wrapper = self._batch_isend_irecv(original) if name == "batch_isend_irecv" else \
                    self._collective(name, original)
                setattr(dist, name, wrapper)
            for group_name, group in self.groups.items():
                for method in SHARED_MEMORY_COLLECTIVES:
                    if group.shm is not None and method not in vars(group.shm):
                        setattr(group.shm, method, self._shared_memory(group_name, method, getattr(group.shm, method)))
                        shared.append((group.shm, method))
            yield self
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)
            for buffer, method in shared:
                delattr(buffer, method)

    def collect(self) -> CommLog:
        out, self.log = self.log, CommLog()
        return out
