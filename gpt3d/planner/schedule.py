"""Pipeline-schedule arithmetic: the bubble and how many micro-batches the first stage holds in flight.

Notation: p pipeline stages, m micro-batches per step, v virtual stages (model chunks) per rank.
- Bubble (Narayanan et al. 2021, section 2.2): the idle time is (p - 1) micro-batch slots for 1F1B/GPipe and
  (p - 1) / v slots with interleaving, so a step lasts (m + (p - 1) / v) slots and the bubble fraction of the step is
  ((p - 1) / v) / (m + (p - 1) / v) -- (p - 1) / (m + p - 1) without interleaving.
- In flight on the first stage at the peak of 1F1B: min(p, m) micro-batches, each holding its l / p layers; with
  interleaving Megatron warms up (v - 1) p + 2 (p - 1) chunks and runs one more, so v p + p - 1 chunks of l / (p v)
  layers each (the factor 1 + (p - 1) / (p v) of Korthikanti et al.); GPipe keeps all m micro-batches.
"""
from __future__ import annotations


def bubble_slots(pp: int, vp: int) -> float:
    """Idle micro-batch slots per step: (p - 1) / v."""
    return (pp - 1) / vp


def bubble_fraction(pp: int, num_microbatches: int, vp: int = 1) -> float:
    """Fraction of the step spent in the pipeline bubble: ((p-1)/v) / (m + (p-1)/v)."""
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    idle = bubble_slots(pp, vp)
    return idle / (num_microbatches + idle)


def first_stage_layer_activations(n_layers: int, pp: int, vp: int, num_microbatches: int,
                                  schedule: str = "1f1b") -> float:
    """Layer-activation sets (one layer, one micro-batch) alive at the peak on the first pipeline stage."""
    layers_per_stage = n_layers / pp
    if pp == 1:
        return n_layers * (num_microbatches if schedule == "gpipe" else 1)
    if schedule == "gpipe":
        return layers_per_stage * num_microbatches
    if vp == 1:
        return layers_per_stage * min(pp, num_microbatches)
    chunks = min(vp * pp + pp - 1, num_microbatches * vp)
    return chunks * layers_per_stage / vp


def first_stage_microbatches_in_flight(pp: int, vp: int, num_microbatches: int, schedule: str = "1f1b") -> int:
    """Micro-batches whose input the first stage still holds (for the embedding's saved tensors)."""
    if schedule == "gpipe" or pp == 1:
        return num_microbatches if schedule == "gpipe" else 1
    if vp == 1:
        return min(pp, num_microbatches)
    return min(num_microbatches, -(-(vp * pp + pp - 1) // vp))
