"""What each pipeline schedule gains: the best layout's degrees, micro-batch and memory switches, predicted with every
schedule that can run them (1F1B, interleaved 1F1B, ZB-H1, ZB-V), against 1F1B without interleaving."""
from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from .hardware import GiB
from .layout import divisibility_problems
from .performance import PerformanceOptions, predict
from .search import PlanResult

VARIANTS = (("1f1b", "1f1b", 1), ("interleaved (vp 2)", "1f1b", 2), ("zbh1", "zbh1", 1), ("zbv", "zbv", 2))


def schedule_gains(result: PlanResult, options: PerformanceOptions) -> list[dict]:
    if not result.ranked:
        return []
    best = result.ranked[0].layout
    rows = []
    for name, schedule, vp in VARIANTS:
        layout = dataclasses.replace(best, schedule=schedule, vp=vp)
        problems = divisibility_problems(result.model, layout, result.num_gpus, result.global_batch, result.seq_len)
        if problems:
            rows.append({"schedule": name, "problem": problems[0].message})
            continue
        p = predict(result.model, layout, result.gpu, result.global_batch, result.seq_len, options)
        rows.append({"schedule": name, "step_s": p.iteration_time_s, "bubble_s": p.time.pp_bubble,
                     "tokens_per_s": p.tokens_per_s, "activations_gib": p.memory.gib()["activations"],
                     "deferred_w_gib": p.memory.gib()["deferred_w"],
                     "total_gib": p.memory.gib()["total"], "fits": p.memory.total <= p.memory_capacity})
    base = next((r for r in rows if r["schedule"] == "1f1b" and "step_s" in r), None)
    for r in rows:
        if base is not None and "step_s" in r:
            r["speedup_vs_1f1b"] = base["step_s"] / r["step_s"]
    return rows


def render_schedule_gains(result: PlanResult, rows: list[dict], console: Console) -> None:
    if not rows:
        return
    lay = result.ranked[0].layout
    table = Table(title=f"What each pipeline schedule gains for the best degrees (tp{lay.tp} pp{lay.pp} dp{lay.dp} "
                        f"mb{lay.micro_batch}, m = {lay.num_microbatches(result.global_batch)} micro-batches)")
    for name in ("schedule", "step s", "PP bubble ms", "tokens/s", "vs 1f1b", "activations GiB", "deferred W GiB",
                 "total GiB", "fits"):
        table.add_column(name, justify="right")
    for r in rows:
        if "problem" in r:
            table.add_row(r["schedule"], "-", "-", "-", "-", "-", "-", "-", r["problem"])
            continue
        table.add_row(r["schedule"], f"{r['step_s']:.2f}", f"{r['bubble_s'] * 1e3:,.0f}", f"{r['tokens_per_s']:,.0f}",
                      f"{r.get('speedup_vs_1f1b', 1.0):.3f}x", f"{r['activations_gib']:.1f}",
                      f"{r['deferred_w_gib']:.1f}", f"{r['total_gib']:.1f}",
                      "yes" if r["fits"] else f"no (> {result.ranked[0].memory_capacity / GiB:.1f})")
    console.print(table)
