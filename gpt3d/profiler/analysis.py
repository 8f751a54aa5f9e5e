"""Turn one rank's measured steps into its summary: per-segment means, communication per group (blocked, in the
pipeline's gaps, overlapped), the pipeline bubble, and an accounting of the step that adds up exactly:

    step = layers + exposed communication + bubble + optimizer + other

- layers: exclusive time of every profiled unit (forward, backward, recompute); collectives inside excluded.
- bubble: the pipeline schedule's span (end of zero_grad .. start of gradient sync) minus its forward/backward time:
  waiting for neighbours, including the point-to-point transfers that fill those gaps.
- exposed communication: time blocked in collectives that is not already in the bubble (TP collectives inside layers,
  DP reduction not overlapped with backward, the tied-embedding and loss/grad-norm reductions).
- optimizer: the Adam update (its own collectives excluded); other: the rest (batch slicing, zero_grad, glue between
  layers, autograd engine start-up).
"""
from __future__ import annotations

from statistics import mean, median

from gpt3d.train.runtime import Runtime

from .clock import PHASES
from .comm_timing import COMM_GROUPS
from .step import StepProfile, TrainerProfiler


def _in_events(t: float, events: list) -> bool:
    return any(s <= t < e for _, _, _, s, e in events)


def comm_summary(steps: list[StepProfile]) -> tuple[dict, list[float]]:
    """Per group means over the steps, and each step's exposed (non-bubble) communication time."""
    n = len(steps)
    groups = {g: {"time_s": 0.0, "inside_layers_s": 0.0, "pipeline_gaps_s": 0.0, "outside_schedule_s": 0.0,
                  "ops": 0, "bytes": {}, "reduction_s": 0.0, "overlapped_s": 0.0} for g in COMM_GROUPS}
    exposed_per_step = []
    for step in steps:
        exposed = 0.0
        w0, w1 = step.window
        for r in step.comm.records:
            g = groups[r.group]
            d = r.end - r.start
            g["time_s"] += d
            if r.kind != "wait":
                g["ops"] += 1
            if r.inside_layer:
                g["inside_layers_s"] += d
                exposed += d
            elif w0 <= r.start < w1 and not _in_events(r.start, step.events):
                g["pipeline_gaps_s"] += d  # part of the bubble
            else:
                g["outside_schedule_s"] += d
                exposed += d
            if r.kind == "call":
                g["reduction_s"] += d
        for a in step.comm.asyncs:
            end = a.completed if a.completed is not None else (a.wait_end if a.wait_end is not None else a.launched)
            duration = max(0.0, end - a.launched)
            groups[a.group]["reduction_s"] += duration
            groups[a.group]["overlapped_s"] += max(0.0, duration - a.waited)
        for name, ops in step.comm_bytes.items():
            target = groups[name]["bytes"]
            for op, nbytes in ops.items():
                target[op] = target.get(op, 0) + nbytes
        exposed_per_step.append(exposed)
    for g in groups.values():
        for key in ("time_s", "inside_layers_s", "pipeline_gaps_s", "outside_schedule_s", "reduction_s",
                    "overlapped_s"):
            g[key] /= n
        g["ops"] = g["ops"] / n
        g["bytes"] = {op: b / n for op, b in g["bytes"].items()}
        g["total_bytes"] = sum(g["bytes"].values())
        g["overlap_fraction"] = g["overlapped_s"] / g["reduction_s"] if g["reduction_s"] > 0 else 0.0
    return groups, exposed_per_step


def rank_summary(profiler: TrainerProfiler, steps: list[StepProfile], rt: Runtime, peak: tuple[float, str],
                 memory: tuple[int, str]) -> dict:
    import torch
    ctx = rt.ctx
    n = len(steps)
    segments = []
    for seg in profiler.segments:
        times = [sum(s.segment_s[seg.index][p] for s in steps) / n for p in range(3)]
        forwards = sum(s.forwards[seg.chunk] for s in steps)
        saved = sum(s.saved_bytes[seg.index] for s in steps)
        segments.append({
            "name": seg.name, "kind": seg.kind, "layer": seg.layer, "chunk": seg.chunk,
            "virtual_stage": seg.virtual_stage, **{f"{p}_s": t for p, t in zip(PHASES, times)},
            "forward_flops": seg.forward_flops, "forward_flops_rank": seg.forward_flops_rank,
            "recomputed": seg.recomputed, "param_bytes": seg.param_bytes,
            "activation_bytes": saved / forwards if forwards else 0.0,
        })
    comm, exposed = comm_summary(steps)
    step_s = [s.seconds for s in steps]
    span = [s.window[1] - s.window[0] for s in steps]
    bubble = [max(0.0, sp - s.busy_s) for sp, s in zip(span, steps)]
    layers = [sum(sum(t) for t in s.segment_s) for s in steps]
    optimizer = [s.optimizer_s for s in steps]
    other = [st - l - e - b - o for st, l, e, b, o in zip(step_s, layers, exposed, bubble, optimizer)]
    last = steps[-1]
    return {
        "rank": ctx.rank, "tp_rank": ctx.tp_rank, "dp_rank": ctx.dp_rank, "pp_rank": ctx.pp_rank,
        "device": str(ctx.device), "threads": torch.get_num_threads(), "steps": n,
        "step_s": mean(step_s), "step_s_median": median(step_s), "step_s_all": step_s,
        "busy_s": mean(s.busy_s for s in steps), "schedule_s": mean(span), "bubble_s": mean(bubble),
        "layers_s": mean(layers), "comm_exposed_s": mean(exposed), "optimizer_s": mean(optimizer),
        "other_s": mean(other),
        "communication": comm, "segments": segments,
        "events": [list(e) for e in last.events], "window": list(last.window),
        "peak_tflops": peak[0], "peak_source": peak[1],
        "peak_memory_bytes": memory[0], "memory_source": memory[1],
    }
