"""Activation recomputation that replays the same dropout masks.

torch's checkpoint restores the device's global RNG for the recomputation; the tensor-parallel stream of the
RNGTracker lives outside it, so its state is captured before the forward and put back around the recomputation.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint


def checkpoint(fn: Callable, *args, rng_context: Optional[Callable] = None):
    """Run `fn(*args)` without keeping its activations; backward recomputes them (same masks)."""
    tracker = getattr(rng_context, "tracker", None)
    saved = tracker.get_states() if tracker is not None else None
    calls = [0]

    def run(*inner):
        calls[0] += 1
        if calls[0] == 1 or tracker is None:
            return fn(*inner)
        current = tracker.get_states()
        tracker.set_states(saved)  # recomputation: draw the same masks as the first forward
        try:
            return fn(*inner)
        finally:
            tracker.set_states(current)

    return torch_checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True)
