"""`gpt3d schedule`: simulate pipeline schedules, print bubble and activation memory, draw Gantt charts.

Costs are per stage (the layers of one pipeline rank), in any unit: F, B (input gradient) and W (weight gradient)
default to 1 each (the zero-bubble paper's T_F = T_B = T_W); `--costs profile.json` takes the ones `gpt3d profile`
measured. Nothing runs on a device: the simulator executes every rank's action list (see simulator.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .schedules import KINDS, ScheduleError, build_schedule, chunks_per_rank
from .simulator import Costs, DeadlockError, costs_from_stage_costs, simulate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS + ("all",), default="all",
                        help="schedule to simulate, or all of them (default)")
    parser.add_argument("--pp", type=int, required=True, help="pipeline stages (ranks)")
    parser.add_argument("--micro-batches", "-m", type=int, required=True, help="micro-batches per step")
    parser.add_argument("--vp", type=int, default=2, help="model chunks per rank for interleaved (default 2)")
    parser.add_argument("--costs", help="profile.json of `gpt3d profile` (its schedule_costs); overrides the below")
    parser.add_argument("--forward", type=float, default=1.0, help="forward cost of one stage (default 1)")
    parser.add_argument("--backward-input", type=float, default=1.0, help="input-gradient cost of one stage")
    parser.add_argument("--backward-weight", type=float, default=1.0, help="weight-gradient cost of one stage")
    parser.add_argument("--comm", type=float, default=0.0, help="cost of one point-to-point transfer (default 0)")
    parser.add_argument("--out", help="directory for the Gantt charts (schedule-<kind>.png); none: print only")


def _stage_costs(args: argparse.Namespace) -> dict:
    if not args.costs:
        return {"forward_s": args.forward, "backward_input_s": args.backward_input,
                "backward_weight_s": args.backward_weight}
    path = Path(args.costs)
    if not path.is_file():
        raise ValueError(f"--costs: {path} does not exist; pass the profile.json written by `gpt3d profile`")
    report = json.loads(path.read_text())
    if "schedule_costs" not in report:
        raise ValueError(f"--costs: {path} has no schedule_costs; re-run `gpt3d profile` with this version")
    return report["schedule_costs"]


def run(args: argparse.Namespace) -> int:
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    try:
        stage_costs = _stage_costs(args)
        if min(stage_costs["forward_s"], stage_costs["backward_input_s"], stage_costs["backward_weight_s"],
               args.comm) < 0:
            raise ValueError("costs must be >= 0")
        results = {}
        for kind in kinds:
            vp = chunks_per_rank(kind, 1 if kind in ("gpipe", "1f1b", "zbh1") else args.vp)
            try:
                schedule = build_schedule(kind, args.pp, args.micro_batches, vp)
            except ScheduleError as exc:
                if args.kind != "all":
                    raise
                print(f"{kind:<12} skipped: {exc}")
                continue
            results[kind] = simulate(schedule, costs_from_stage_costs(stage_costs, vp, args.comm))
    except (ScheduleError, ValueError, DeadlockError) as exc:
        print(f"gpt3d schedule: {exc}", file=sys.stderr)
        return 2
    unit = "s" if args.costs else "units"
    base = results.get("1f1b")
    print(f"pp={args.pp}, m={args.micro_batches}; per-stage costs F={stage_costs['forward_s']:.4g} "
          f"B={stage_costs['backward_input_s']:.4g} W={stage_costs['backward_weight_s']:.4g} "
          f"p2p={args.comm:.4g} ({unit})")
    print(f"{'schedule':<12} {'step':>10} {'bubble':>8} {'vs 1f1b':>8} {'peak act.':>10}  per-rank bubble / peak")
    for kind, sim in results.items():
        ratio = f"{sim.bubble / base.bubble:.2f}x" if base is not None and base.bubble > 0 else "-"
        ranks = " ".join(f"{b:.0%}/{a:g}" for b, a in zip(sim.bubble_per_rank, sim.peak_activations))
        print(f"{kind:<12} {sim.makespan:>10.4g} {sim.bubble:>8.1%} {ratio:>8} {max(sim.peak_activations):>10g}  "
              f"{ranks}")
    print("peak act. = activations held at once, in micro-batches of one stage's layers (1F1B holds pp on rank 0)")
    if args.out:
        from .gantt import draw_gantt
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for kind, sim in results.items():
            path = out / f"schedule-{kind}.png"
            draw_gantt(sim, path)
            print(f"wrote {path}")
    return 0
