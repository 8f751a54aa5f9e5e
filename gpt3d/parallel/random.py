"""Dropout random streams for tensor parallelism.

Where an activation is replicated across TP ranks (the residual stream without sequence parallelism), every TP rank
must drop the same elements: that is the default stream, seeded identically on the TP ranks. Where it is sharded
(attention heads, or the residual stream under sequence parallelism), ranks must draw different masks: that is the
tensor-parallel stream, seeded per TP rank. The tracker swaps the device's global RNG state in and out.
"""
from __future__ import annotations

import contextlib

import torch


def _get_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _seeded_state(device: torch.device, seed: int) -> torch.Tensor:
    saved = _get_state(device)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    state = _get_state(device)
    _set_state(device, saved)
    return state


class RNGTracker:
    """Named RNG streams; `fork(name)` runs a block on that stream and saves where it left off."""

    TENSOR_PARALLEL = "tensor-parallel"

    def __init__(self, device: torch.device):
        self.device = device
        self.states: dict[str, torch.Tensor] = {}

    def add(self, name: str, seed: int) -> None:
        self.states[name] = _seeded_state(self.device, seed)

    @contextlib.contextmanager
    def fork(self, name: str = TENSOR_PARALLEL):
        outer = _get_state(self.device)
        _set_state(self.device, self.states[name])
        try:
            yield
        finally:
            self.states[name] = _get_state(self.device)
            _set_state(self.device, outer)

    def get_states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states = {k: v.clone() for k, v in states.items()}


def seed_everything(seed: int, tp_rank: int, pp_rank: int, device: torch.device) -> RNGTracker:
    """Default stream: same on TP ranks (differs per pipeline stage); TP stream: differs per TP rank."""
    default_seed = seed + 100 * pp_rank
    torch.manual_seed(default_seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(default_seed)
    tracker = RNGTracker(device)
    tracker.add(RNGTracker.TENSOR_PARALLEL, default_seed + 2718 + tp_rank)
    return tracker


class StreamContext:
    """A callable handed to dropout layers: `with ctx():` draws from the tracker's stream `name`."""

    def __init__(self, tracker: RNGTracker, name: str = RNGTracker.TENSOR_PARALLEL):
        self.tracker = tracker
        self.name = name

    def __call__(self):
        return self.tracker.fork(self.name)
