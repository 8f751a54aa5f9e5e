"""Pipeline-schedule arithmetic: the bubble and how many micro-batches the first stage holds in flight.

Notation: p pipeline stages, m micro-batches per step, v virtual stages (model chunks) per rank.
- Bubble (Narayanan et al. 2021, section 2.2): the idle time is (p - 1) micro-batch slots for 1F1B/GPipe and
  (p - 1) / v slots with interleaving, so a step lasts (m + (p - 1) / v) slots and the bubble fraction of the step is
  ((p - 1) / v) / (m + (p - 1) / v) -- (p - 1) / (m + p - 1) without interleaving.
- Zero-bubble schedules (Qi et al., ICLR 2024) split the backward into B (input gradient) and W (weight gradient);
  with T_F = T_B = T_W (the paper's assumption; a slot is T_F + T_B + T_W): ZB-H1 idles (p - 1)(T_F + T_B - T_W),
  i.e. (p - 1) / 3 slots (section 3.1; exact in gpt3d's simulator for any costs). ZB-V (two chunks per rank in a V)
  idles what gpt3d's simulator measures for its action lists: for m >= 2p it does not depend on m, and equals
  (p - 1) T_F / 2, i.e. (p - 1) / 6 slots: the start-up lower bound (the last rank cannot start before p - 1 chunk
  forwards of T_F / 2, and every rank has the same work). Fewer micro-batches are simulated exactly.
- In flight on the first stage at the peak of 1F1B: min(p, m) micro-batches, each holding its l / p layers; with
  interleaving Megatron warms up (v - 1) p + 2 (p - 1) chunks and runs one more, so v p + p - 1 chunks of l / (p v)
  layers each (the factor 1 + (p - 1) / (p v) of Korthikanti et al.); GPipe keeps all m micro-batches. ZB-H1 and
  ZB-V hold at most p stage-sized activation sets on every rank (the paper's "same memory as 1F1B"; the simulator's
  peak), counting the inputs a deferred W keeps; ZB-V's first chunk holds up to 2p - 1 micro-batch inputs.
- Deferred W (the paper's section 3 memory: a W keeps its layer's inputs and output gradients until it runs). The
  planner walks each rank's own action list: a chunk-micro-batch holds all its saved activations from F to B, and
  only its linears' inputs plus their output gradients from B to W (`split_backward_activation_peak`,
  `weight_grads_pending`): ZB-H1 stage s has up to s + 1 W's pending (W(i - s) runs after B(i)); under ZB-V the
  pending W's grow from rank 0 to rank p - 1 and with m (its cool-down runs every pending B before the W's).
"""
from __future__ import annotations

from functools import lru_cache


def bubble_slots(pp: int, vp: int, schedule: str = "1f1b", num_microbatches: int = 0) -> float:
    """Idle micro-batch slots per step: (p - 1) / v for 1F1B, GPipe and interleaving; see the module notes for the
    zero-bubble schedules."""
    if pp == 1:
        return 0.0
    if schedule == "zbh1":
        return (pp - 1) / 3
    if schedule == "zbv":
        return _zbv_slots(pp, min(max(num_microbatches, pp), 2 * pp))
    return (pp - 1) / vp


@lru_cache(maxsize=256)
def _zbv_slots(pp: int, num_microbatches: int) -> float:
    from gpt3d.parallel.pipeline.schedules import build_schedule
    from gpt3d.parallel.pipeline.simulator import Costs, simulate
    sim = simulate(build_schedule("zbv", pp, num_microbatches, 2), Costs.per_stage(1.0, 1.0, 1.0, 2))
    return (sim.makespan - 3.0 * num_microbatches) / 3.0


def bubble_fraction(pp: int, num_microbatches: int, vp: int = 1, schedule: str = "1f1b") -> float:
    """Fraction of the step spent in the pipeline bubble: idle / (m + idle), idle = bubble_slots."""
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    idle = bubble_slots(pp, vp, schedule, num_microbatches)
    return idle / (num_microbatches + idle)


def first_stage_layer_activations(n_layers: int, pp: int, vp: int, num_microbatches: int,
                                  schedule: str = "1f1b") -> float:
    """Layer-activation sets (one layer, one micro-batch) alive at the peak on the first pipeline stage."""
    layers_per_stage = n_layers / pp
    if pp == 1:
        return n_layers * (num_microbatches if schedule == "gpipe" else 1)
    if schedule == "gpipe":
        return layers_per_stage * num_microbatches
    if vp == 1 or schedule == "zbv":
        return layers_per_stage * min(pp, num_microbatches)
    chunks = min(vp * pp + pp - 1, num_microbatches * vp)
    return chunks * layers_per_stage / vp


def first_stage_microbatches_in_flight(pp: int, vp: int, num_microbatches: int, schedule: str = "1f1b") -> int:
    """Micro-batches whose input the first stage still holds (for the embedding's saved tensors)."""
    if schedule == "gpipe" or pp == 1:
        return num_microbatches if schedule == "gpipe" else 1
    if schedule == "zbv":
        return min(num_microbatches, 2 * pp - 1)
    if vp == 1:
        return min(pp, num_microbatches)
    return min(num_microbatches, -(-(vp * pp + pp - 1) // vp))


@lru_cache(maxsize=256)
def _split_backward_counts(pp: int, vp: int, num_microbatches: int, schedule: str
                           ) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per rank: (forwarded and not yet B'd, B'd and not yet W'd) chunk-micro-batch pairs after each of its actions;
    only the distinct pairs, which is all a peak needs."""
    from gpt3d.parallel.pipeline.schedules import build_schedule
    built = build_schedule(schedule, pp, num_microbatches, vp)
    out = []
    for rank in range(pp):
        forwarded = pending = 0
        seen = set()
        for action in built.compute(rank):
            if action.kind == "F":
                forwarded += 1
            elif action.kind == "B":
                forwarded, pending = forwarded - 1, pending + 1
            elif action.kind == "W":
                pending -= 1
            seen.add((forwarded, pending))
        out.append(tuple(sorted(seen)))
    return tuple(out)


def split_backward_activation_peak(pp: int, vp: int, num_microbatches: int, schedule: str, stage: int,
                                   full: float, after_b: float) -> float:
    """Peak over rank `stage`'s step of held bytes, when a chunk-micro-batch holds `full` from its F to its B and
    `after_b` (the linears' inputs its W needs) from its B to its W."""
    return max(f * full + w * after_b for f, w in _split_backward_counts(pp, vp, num_microbatches, schedule)[stage])


def weight_grads_pending(pp: int, vp: int, num_microbatches: int, schedule: str, stage: int) -> int:
    """The most (model chunk, micro-batch) pairs whose B ran and whose W has not, on pipeline rank `stage`, over the
    step (0 for schedules that do not split the backward)."""
    if schedule not in ("zbh1", "zbv") or pp == 1:
        return 0
    return max(w for _, w in _split_backward_counts(pp, vp, num_microbatches, schedule)[stage])
