"""Per-category memory timeline of fake tensors: every storage an op creates, when it is freed, and what it is.

A TorchDispatchMode sitting above FakeTensorMode sees every op. Each new storage becomes an `Allocation`; every
tensor object that shares it holds one reference (a weakref finaliser drops it), and the storage counts as freed when
the last one dies. Under FakeTensorMode a tensor kept by autograd for backward keeps its Python object alive, so this
follows the real lifetime of saved activations. The event log (+bytes at creation, -bytes at free) is replayed at the
end, once every allocation has its final category:

  params / grads / optimizer: labelled by identity after the trainer is built (`label`);
  comm: created inside a communication function (`comm_codes`: pipeline send/receive, bucket reductions, gathers);
  activations: created inside a model chunk's forward and still alive when that forward returns (saved for backward);
  deferred_w: output gradients a zero-bubble schedule's B keeps for its deferred W (labelled by the dry run);
  temporaries: everything else (workspaces of forward and backward, transient gradients, the optimizer's scratch).

Integer and boolean tensors computed from real tensors only (token ids, block-sparse layouts and their index maps:
the structural data the code reads on the host) are computed for real, so code that inspects them works; their bytes
count like any other's. Data-dependent scalars (`.item()`, `float(t)`, `bool(t)`) have no value under fake tensors; this mode answers them
with 1 (True for booleans): the dry run has no data, and the code paths it then takes (finite gradient norm, step
applied) are the ones of a healthy training step.
"""
from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, field
from types import CodeType
from typing import Iterable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("params", "grads", "optimizer", "activations", "comm", "deferred_w", "temporaries")
STACK_DEPTH = 40
"""How many Python frames above an op are searched for a communication function."""


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _is_host_data(out) -> bool:
    tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return bool(tensors) and not any(_is_float(t) for t in tensors)


@dataclass
class Allocation:
    nbytes: int
    category: str
    op: str  # the op that created it (for reports)
    forward_call: Optional[int] = None  # the chunk forward that created it (resolved on that forward's exit)
    refs: int = 0
    live: bool = True
    holders: list = field(default_factory=list)  # weakrefs of the tensor objects counted in `refs`


@dataclass
class Peak:
    """Peak bytes of the timeline: the total peak with its split by category, and each category's own maximum."""
    total: int
    at_peak: dict[str, int]
    category_max: dict[str, int]
    baseline: int = 0  # bytes alive when the measured window started (the built model and optimizer)


@dataclass
class MemoryTimeline(TorchDispatchMode):
    comm_codes: frozenset[CodeType] = frozenset()
    allocations: list[Allocation] = field(default_factory=list)
    events: list[tuple[int, int]] = field(default_factory=list)  # (allocation index, +-bytes)
    window_start: int = 0
    _by_storage: dict[int, int] = field(default_factory=dict)  # storage address -> live allocation index
    _forward_calls: list[int] = field(default_factory=list)
    _forward_allocs: dict[int, list[int]] = field(default_factory=dict)
    _next_forward: int = 0

    def __post_init__(self):
        super().__init__()

    # -- the dispatch hook -------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if inputs and not any(isinstance(t, FakeTensor) for t in inputs) and not any(_is_float(t) for t in inputs):
            with unset_fake_temporarily():  # host data in, host data out
                out = func(*args, **kwargs)
        elif func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return True if dtype == torch.bool else (1.0 if _is_float(args[0]) else 1)
        else:
            out = func(*args, **kwargs)
            if not inputs and _is_host_data(out):  # a factory of host data (torch.arange, torch.zeros(dtype=bool))
                with unset_fake_temporarily():
                    out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, func.__name__)
        return out

    def track(self, t: torch.Tensor, op: str = "") -> None:
        """Count `t` as one more holder of its storage (a new allocation when the storage is new)."""
        storage = t.untyped_storage()
        key = storage._cdata
        index = self._by_storage.get(key)
        if index is not None and not self._still_holds(index, key):
            self._free(index, key)  # freed while a holder lived on with other data (`param.data = ...`); reused
            index = None
        if index is None:
            index = len(self.allocations)
            category = "comm" if self._in_comm() else "temporaries"
            forward = self._forward_calls[-1] if self._forward_calls and category != "comm" else None
            self.allocations.append(Allocation(storage.nbytes(), category, op, forward))
            self._by_storage[key] = index
            self.events.append((index, storage.nbytes()))
            if forward is not None:
                self._forward_allocs[forward].append(index)
        alloc = self.allocations[index]
        alloc.refs += 1
        alloc.holders.append(weakref.ref(t))
        weakref.finalize(t, self._release, key, index)

    def _still_holds(self, index: int, key: int) -> bool:
        """Does a live holder of allocation `index` still point at storage `key`?"""
        holders = self.allocations[index].holders
        for i, ref in enumerate(holders):
            t = ref()
            if t is not None and t.untyped_storage()._cdata == key:
                if i:
                    holders[:i] = []  # dead or moved holders before a good one: drop them
                return True
        return False

    def _release(self, key: int, index: int) -> None:
        alloc = self.allocations[index]
        alloc.refs -= 1
        if alloc.refs == 0:
            self._free(index, key)

    def _free(self, index: int, key: int) -> None:
        alloc = self.allocations[index]
        if alloc.live:
            alloc.live = False
            alloc.holders = []
            self.events.append((index, -alloc.nbytes))
        if self._by_storage.get(key) == index:
            del self._by_storage[key]

    def _in_comm(self) -> bool:
        if not self.comm_codes:
            return False
        frame = sys._getframe(2)
        for _ in range(STACK_DEPTH):
            if frame is None:
                return False
            if frame.f_code in self.comm_codes:
                return True
            frame = frame.f_back
        return False

    # -- what the dry run tells the tracker --------------------------------------------------------------------
    def forward_enter(self) -> None:
        self._next_forward += 1
        self._forward_calls.append(self._next_forward)
        self._forward_allocs[self._next_forward] = []

    def forward_exit(self) -> None:
        """What a forward created and still holds is saved for backward: activations."""
        call = self._forward_calls.pop()
        for index in self._forward_allocs.pop(call):
            if self.allocations[index].live and self.allocations[index].category == "temporaries":
                self.allocations[index].category = "activations"

    def label(self, tensors: Iterable[torch.Tensor], category: str, only_from: Optional[str] = None) -> None:
        """Give the storages of `tensors` (already tracked or not) the category `category` (with `only_from`: only
        those whose category is that one)."""
        for t in tensors:
            if t is None:
                continue
            index = self._by_storage.get(t.untyped_storage()._cdata)
            if index is None:
                self.track(t, "label")
                index = self._by_storage[t.untyped_storage()._cdata]
            if only_from is None or self.allocations[index].category == only_from:
                self.allocations[index].category = category

    def start_window(self) -> None:
        """Measure the peak from here (after building: the build's full-shape init tensors are not training)."""
        for key, index in list(self._by_storage.items()):
            if not self._still_holds(index, key):
                self._free(index, key)
        self.window_start = len(self.events)

    # -- results -----------------------------------------------------------------------------------------------
    def live_bytes(self) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for alloc in self.allocations:
            if alloc.live:
                out[alloc.category] += alloc.nbytes
        return out

    def peak(self) -> Peak:
        current = dict.fromkeys(CATEGORIES, 0)
        for index, delta in self.events[:self.window_start]:
            current[self.allocations[index].category] += delta
        baseline = sum(current.values())
        total = baseline
        best_total, at_peak, category_max = total, dict(current), dict(current)
        for index, delta in self.events[self.window_start:]:
            category = self.allocations[index].category
            current[category] += delta
            total += delta
            if current[category] > category_max[category]:
                category_max[category] = current[category]
            if total > best_total:
                best_total, at_peak = total, dict(current)
        return Peak(best_total, at_peak, category_max, baseline)
