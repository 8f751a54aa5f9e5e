"""Render a plan as rich tables or as JSON."""
from __future__ import annotations

import dataclasses
from typing import Any

from rich.console import Console
from rich.table import Table

from .hardware import GiB
from .search import PlanResult


def plan_to_dict(result: PlanResult) -> dict[str, Any]:
    """A JSON-serialisable view: inputs, ranked layouts (time and memory breakdowns) and discard reasons."""
    model = result.model
    return {
        "model": {"n_layers": model.n_layers, "d_model": model.d_model, "n_heads": model.n_heads,
                  "d_ff": model.d_ff, "parameters": model.num_parameters(padded_vocab=True),
                  "attention_pattern": model.attention_pattern},
        "gpu": dataclasses.asdict(result.gpu),
        "num_gpus": result.num_gpus,
        "global_batch": result.global_batch,
        "seq_len": result.seq_len,
        "candidates": result.candidates,
        "elapsed_s": result.elapsed_s,
        "layouts": [p.to_dict() for p in result.ranked],
        "discarded": [dataclasses.asdict(g) for g in result.discarded.values()],
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}"


def render(result: PlanResult, console: Console) -> None:
    gpu = result.gpu
    console.print(f"[bold]gpt3d plan[/bold]: {result.model.num_parameters(padded_vocab=True) / 1e9:.1f}B parameters "
                  f"on {result.num_gpus} x {gpu.name}, global batch {result.global_batch}, seq {result.seq_len} "
                  f"({result.candidates} layouts evaluated in {result.elapsed_s:.2f} s)")
    perf = Table(title="Top layouts by predicted throughput (time per step, ms)")
    for name in ("#", "tp", "pp", "dp", "vp", "schedule", "mb", "sp", "recompute", "dist opt", "step s", "tokens/s",
                 "TFLOP/s/GPU", "MFU", "compute", "TP comm", "PP bubble", "PP p2p", "DP exposed", "optimizer"):
        perf.add_column(name, justify="right")
    for rank, p in enumerate(result.ranked, 1):
        lay, t = p.layout, p.time
        schedule = "interleaved" if lay.schedule == "1f1b" and lay.vp > 1 else lay.schedule
        perf.add_row(str(rank), str(lay.tp), str(lay.pp), str(lay.dp), str(lay.vp), schedule, str(lay.micro_batch),
                     "on" if lay.sequence_parallel else "off", lay.recompute,
                     "on" if lay.distributed_optimizer else "off", f"{p.iteration_time_s:.2f}",
                     f"{p.tokens_per_s:,.0f}", f"{p.model_tflops_per_gpu:.1f}", f"{p.mfu:.1%}", _ms(t.compute),
                     _ms(t.tp_comm), _ms(t.pp_bubble), _ms(t.pp_comm), _ms(t.dp_comm_exposed), _ms(t.optimizer))
    console.print(perf)
    memory = Table(title=f"Memory per GPU, most loaded pipeline stage (GiB; {gpu.name}: "
                         f"{gpu.memory_bytes / GiB:.0f} GiB, {result.ranked[0].memory_capacity / GiB:.1f} usable)"
                   if result.ranked else "Memory")
    # deferred W: the output gradients zero-bubble schedules keep until their W; the total counts it together with
    # the activations at their joint peak (MemoryBreakdown.held_peak), not the two peaks added
    for name in ("#", "params", "grads", "optimizer", "activations", "deferred W", "comm buffers", "total",
                 "of usable"):
        memory.add_column(name, justify="right")
    for rank, p in enumerate(result.ranked, 1):
        g = p.memory.gib()
        memory.add_row(str(rank), *(f"{g[k]:.1f}" for k in ("params", "grads", "optimizer", "activations",
                                                           "deferred_w", "comm_buffers", "total")),
                       f"{p.memory.total / p.memory_capacity:.0%}")
    console.print(memory)
    if result.discarded:
        discarded = Table(title="Discarded layouts")
        discarded.add_column("reason")
        discarded.add_column("layouts", justify="right")
        discarded.add_column("example")
        for group in sorted(result.discarded.values(), key=lambda g: -g.count):
            discarded.add_row(group.reason, str(group.count), group.example)
        console.print(discarded)
