"""The profile of a run (rank 0): per layer, per stage, per communication group, whole step; written as profile.json,
profile.csv (one row per layer) and profile.png, and printed as rich tables."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from gpt3d.config.run import RunConfig
from gpt3d.model.flops import BACKWARD_TO_FORWARD_RATIO, megatron_model_flops
from gpt3d.parallel.pipeline.simulator import stage_costs_from_events

from .comm_timing import COMM_GROUPS
from .segments import KIND_LABELS

CSV_FIELDS = ("stage", "chunk", "virtual_stage", "layer", "name", "kind", "forward_s", "backward_s", "recompute_s",
              "total_s", "share", "flops", "recompute_flops", "flops_rank", "tflops", "activation_bytes",
              "param_bytes")


def theoretical_bubble(pp: int, num_micro: int, vp: int, schedule: str = "1f1b") -> float:
    """Idle fraction of the schedule with equal stage costs (gpt3d/planner/schedule.py): (p-1)/(m+p-1) for
    1F1B/GPipe, ((p-1)/v) / (m + (p-1)/v) interleaved, and the zero-bubble schedules' smaller idle time."""
    from gpt3d.planner.schedule import bubble_fraction
    kind = schedule if schedule in ("zbh1", "zbv") else "1f1b"
    return bubble_fraction(pp, num_micro, vp, kind)


def _layer_entry(seg: dict, rank: dict) -> dict:
    fwd, bwd, rec = seg["forward_s"], seg["backward_s"], seg["recompute_s"]
    total = fwd + bwd + rec
    flops = seg["forward_flops"] * (1.0 + BACKWARD_TO_FORWARD_RATIO)  # model FLOPs, global batch, all shards
    recompute_flops = seg["forward_flops"] if seg["recomputed"] else 0.0
    flops_rank = seg["forward_flops_rank"] * (1.0 + BACKWARD_TO_FORWARD_RATIO + float(seg["recomputed"]))
    return {
        "name": seg["name"], "label": KIND_LABELS[seg["kind"]], "kind": seg["kind"], "layer": seg["layer"],
        "stage": rank["pp_rank"], "chunk": seg["chunk"], "virtual_stage": seg["virtual_stage"], "rank": rank["rank"],
        "forward_s": fwd, "backward_s": bwd, "recompute_s": rec, "total_s": total,
        "share": total / rank["step_s"] if rank["step_s"] > 0 else 0.0,
        "flops": flops, "recompute_flops": recompute_flops, "flops_rank": flops_rank,
        "tflops": flops_rank / total / 1e12 if total > 0 else 0.0,
        "activation_bytes": seg["activation_bytes"], "param_bytes": seg["param_bytes"],
    }


def build_report(cfg: RunConfig, options, layout, num_micro: int, ranks: list[dict]) -> dict:
    ranks = sorted(ranks, key=lambda r: r["rank"])
    pp, tp, dp, vp = layout.pp, layout.tp, layout.dp, layout.vp
    G, seq = cfg.train.global_batch_size, cfg.train.seq_len
    # Each stage's layers as measured on its (tp 0, dp 0) rank; the other replicas are in "ranks".
    representative = {p: next(r for r in ranks if r["pp_rank"] == p and r["tp_rank"] == 0 and r["dp_rank"] == 0)
                      for p in range(pp)}
    ordered = []
    for p in range(pp):
        rank = representative[p]
        for position, seg in enumerate(rank["segments"]):  # forward order within the rank
            ordered.append((seg["virtual_stage"], position, _layer_entry(seg, rank)))
    layers = [entry for _, _, entry in sorted(ordered, key=lambda t: t[:2])]  # pipeline order
    theory = theoretical_bubble(pp, num_micro, vp, cfg.parallel.schedule)
    stages = []
    for p in range(pp):
        r = representative[p]
        stages.append({
            "stage": p, "rank": r["rank"], "step_s": r["step_s"], "busy_s": r["busy_s"], "schedule_s": r["schedule_s"],
            "idle_s": r["bubble_s"], "bubble_fraction": r["bubble_s"] / r["schedule_s"] if r["schedule_s"] else 0.0,
            "theoretical_bubble_fraction": theory,
            "layers": sorted({e["layer"] for e in layers if e["stage"] == p and e["layer"] is not None}),
        })
    communication = {}
    for g in COMM_GROUPS:
        per_rank = [r["communication"][g] for r in ranks]
        communication[g] = {
            "mean": {k: sum(c[k] for c in per_rank) / len(per_rank) for k in
                     ("time_s", "inside_layers_s", "pipeline_gaps_s", "outside_schedule_s", "reduction_s",
                      "overlapped_s", "total_bytes", "ops")},
            "max_time_s": max(c["time_s"] for c in per_rank),
            "per_rank": per_rank,
        }
        mean_red = communication[g]["mean"]["reduction_s"]
        communication[g]["mean"]["overlap_fraction"] = communication[g]["mean"]["overlapped_s"] / mean_red \
            if mean_red > 0 else 0.0
    step_s = max(r["step_s"] for r in ranks)  # ranks finish a step together (the loss all-reduce)
    model_flops = megatron_model_flops(cfg.model, G, seq)
    per_rank_tflops = model_flops / step_s / layout.world_size / 1e12
    peak = sum(r["peak_tflops"] for r in ranks) / len(ranks)
    step = {
        "step_s": step_s, "step_s_median": ranks[0]["step_s_median"], "tokens_per_s": G * seq / step_s,
        "model_flops": model_flops, "model_tflops_per_rank": per_rank_tflops, "peak_tflops": peak,
        "peak_source": ranks[0]["peak_source"], "mfu": per_rank_tflops / peak if peak > 0 else 0.0,
        "peak_memory_bytes": {str(r["rank"]): r["peak_memory_bytes"] for r in ranks},
        "peak_memory_max_bytes": max(r["peak_memory_bytes"] for r in ranks), "memory_source": ranks[0]["memory_source"],
    }
    accounting_keys = ("step_s", "layers_s", "comm_exposed_s", "bubble_s", "optimizer_s", "other_s", "busy_s",
                       "schedule_s", "step_s_median", "peak_tflops", "peak_memory_bytes", "threads", "device")
    return {
        "version": 1,
        "config": options.config_name, "preset": cfg.preset,
        "layout": {"tp": tp, "pp": pp, "dp": dp, "vp": vp, "world_size": layout.world_size,
                   "schedule": cfg.parallel.schedule,
                   "recompute": cfg.parallel.recompute, "sequence_parallel": cfg.parallel.sequence_parallel},
        "batch": {"global_batch_size": G, "micro_batch_size": cfg.train.micro_batch_size, "num_micro": num_micro,
                  "seq_len": seq, "dtype": cfg.train.dtype},
        "steps": {"measured": options.measured_steps, "warmup": options.warmup},
        "layers": layers,
        "stages": stages,
        "communication": communication,
        "step": step,
        "ranks": [{"rank": r["rank"], "tp_rank": r["tp_rank"], "dp_rank": r["dp_rank"], "pp_rank": r["pp_rank"],
                   **{k: r[k] for k in accounting_keys}} for r in ranks],
        "timeline": [{"rank": r["rank"], "stage": r["pp_rank"], "tp_rank": r["tp_rank"], "dp_rank": r["dp_rank"],
                      "window": r["window"], "events": r["events"]} for r in ranks],
        "trace_files": [f for r in ranks for f in r.get("trace_files", [])],
        # per-stage F / B / W costs for `gpt3d schedule --costs` (gpt3d/parallel/pipeline/simulator.py)
        "schedule_costs": stage_costs_from_events([r["events"] for r in ranks], vp),
    }


def write_outputs(report: dict, out_dir: Path) -> dict[str, Path]:
    from .plot import write_plot
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "profile.json", "csv": out_dir / "profile.csv", "png": out_dir / "profile.png"}
    report["files"] = {k: p.name for k, p in paths.items()}
    paths["json"].write_text(json.dumps(report, indent=1))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for entry in report["layers"]:
            writer.writerow(entry)
    write_plot(report, paths["png"])
    return paths


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=max(Console().width, 132))
    lay = report["layout"]
    title = (f"gpt3d profile {report['config']}: tp={lay['tp']} pp={lay['pp']} dp={lay['dp']} vp={lay['vp']}, "
             f"{report['batch']['num_micro']} micro-batches of {report['batch']['micro_batch_size']}, "
             f"recompute={lay['recompute']}, {report['steps']['measured']} measured step(s)")
    table = Table(title=title, title_justify="left")
    for col, justify in (("stage", "right"), ("layer", "left"), ("fwd ms", "right"), ("bwd ms", "right"),
                         ("recomp ms", "right"), ("share", "right"), ("GFLOP/rank", "right"), ("TFLOP/s", "right"),
                         ("act/mb", "right"), ("params", "right")):
        table.add_column(col, justify=justify)
    for e in report["layers"]:
        name = e["label"] if e["layer"] is None else f"{e['layer']:>3} {e['label']}"
        table.add_row(str(e["stage"]), name, _ms(e["forward_s"]), _ms(e["backward_s"]), _ms(e["recompute_s"]),
                      f"{e['share']:.1%}", f"{e['flops_rank'] / 1e9:,.3f}", f"{e['tflops']:.4f}",
                      _bytes(e["activation_bytes"]), _bytes(e["param_bytes"]))
    console.print(table)

    stages = Table(title="pipeline stages", title_justify="left")
    for col in ("stage", "busy ms", "idle ms", "bubble", "theory"):
        stages.add_column(col, justify="right")
    for s in report["stages"]:
        stages.add_row(str(s["stage"]), _ms(s["busy_s"]), _ms(s["idle_s"]), f"{s['bubble_fraction']:.1%}",
                       f"{s['theoretical_bubble_fraction']:.1%}")
    console.print(stages)

    comm = Table(title="communication per group (mean over ranks, per step)", title_justify="left")
    for col in ("group", "ops", "bytes", "blocked ms", "in layers ms", "in bubble ms", "after ms", "overlapped"):
        comm.add_column(col, justify="right")
    for g, c in report["communication"].items():
        m = c["mean"]
        if m["ops"] == 0 and m["time_s"] == 0:
            continue
        comm.add_row(g, f"{m['ops']:.0f}", _bytes(m["total_bytes"]), _ms(m["time_s"]), _ms(m["inside_layers_s"]),
                     _ms(m["pipeline_gaps_s"]), _ms(m["outside_schedule_s"]),
                     f"{m['overlap_fraction']:.0%}" if m["reduction_s"] > 0 and g == "dp" else "-")
    console.print(comm)

    ranks = Table(title="step accounting per rank (ms): step = layers + comm + bubble + optimizer + other",
                  title_justify="left")
    for col in ("rank", "stage", "step", "layers", "comm", "bubble", "optimizer", "other", "peak mem"):
        ranks.add_column(col, justify="right")
    for r in report["ranks"]:
        ranks.add_row(str(r["rank"]), str(r["pp_rank"]), _ms(r["step_s"]), _ms(r["layers_s"]),
                      _ms(r["comm_exposed_s"]), _ms(r["bubble_s"]), _ms(r["optimizer_s"]), _ms(r["other_s"]),
                      _bytes(r["peak_memory_bytes"]))
    console.print(ranks)
    s = report["step"]
    console.print(f"step {_ms(s['step_s'])} ms | {s['tokens_per_s']:,.0f} tokens/s | "
                  f"{s['model_tflops_per_rank']:.4f} model TFLOP/s per rank | peak {s['peak_tflops']:.4f} TFLOP/s "
                  f"({s['peak_source']}) | MFU {s['mfu']:.1%} | peak memory {_bytes(s['peak_memory_max_bytes'])} "
                  f"({s['memory_source']})")
