"""Pipeline schedules on this machine: measured bubble per schedule (per-rank busy time) against the simulator and
the formula, with compute-heavy micro-batches, all schedules in one spawned world (same model, batch and ranks).

    python benchmarks/pipeline.py                 # pp 4, m 8, 8 layers of d 256, seq 128, micro-batch 2
    python benchmarks/pipeline.py --quick         # smaller model, 1 timed step

Per schedule and rank: busy = the time inside F / B / W actions; span = first action start to last action end over
all ranks (one monotonic clock); measured bubble = mean over ranks of 1 - busy / span. The simulator runs the same
action lists with the mean F, B, W measured in this run (per chunk) and the measured cost of one p2p exchange;
"sim/meas" compares its step time with the measured span. "formula" is the planner's bubble fraction with
T_F = T_B = T_W (gpt3d/planner/schedule.py). Peak activations = micro-batches of one stage's layers held at once,
counted from the executed actions (F until B, or until W when the backward is split).

The p2p cost is measured with a ping-pong of one activation between two ranks of the same world (gloo, same host):
half the round trip per transfer. Every rank uses one thread; with more ranks than free cores, ranks time-share
the cores and busy time includes waiting for a core: the machine's load is printed with the results.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

SCHEDULES = ("1f1b", "interleaved", "zbh1", "zbv")


def overrides(schedule: str, pp: int, d_model: int, seq: int, micro: int, m: int, layers: int) -> list[str]:
    vp = 2 if schedule in ("interleaved",) else 1
    return ["preset=tiny-test", f"model.n_layers={layers}", f"model.d_model={d_model}", "model.n_heads=4",
            f"model.seq_len={seq}", "model.vocab_size=250", "model.vocab_pad_multiple=64",
            f"train.micro_batch_size={micro}", f"train.global_batch_size={micro * m}", "train.threads=1",
            f"parallel.pp={pp}", f"parallel.vp={vp}", f"parallel.schedule={schedule}"]


def ping_pong(ctx, shape, repeats: int = 20) -> float:
    """Seconds per one-way transfer of an activation between pp ranks 0 and 1 (others idle)."""
    import torch
    import torch.distributed as dist
    group = ctx.pp_group
    x = torch.randn(shape)
    dist.barrier()
    if group.rank > 1:
        dist.barrier()
        return 0.0
    peer = group.global_rank(1 - group.rank)
    start = time.perf_counter()
    for _ in range(repeats):
        if group.rank == 0:
            dist.send(x, peer)
            dist.recv(x, peer)
        else:
            dist.recv(x, peer)
            dist.send(x, peer)
    elapsed = time.perf_counter() - start
    dist.barrier()
    return elapsed / (2 * repeats)


def worker(rank: int, world_size: int, args: dict) -> dict:
    import torch.distributed as dist
    from gpt3d.config import load_config
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    out = {}
    for schedule in args["schedules"]:
        cfg = load_config(None, overrides(schedule, args["pp"], args["d_model"], args["seq"], args["micro"],
                                          args["m"], args["layers"]))
        rt = init_runtime(cfg, rank, world_size, rank, world_size)
        trainer = Trainer(cfg, rt)
        rng = np.random.default_rng(0)
        steps = []
        for i in range(args["warmup"] + args["steps"]):
            batch = rng.integers(0, cfg.model.vocab_size, size=(cfg.train.global_batch_size, cfg.train.seq_len + 1))
            dist.barrier()
            trainer.train_step(batch)
            if i >= args["warmup"]:
                runner = trainer.last_runner
                steps.append({"events": list(runner.events), "busy": runner.busy_s, "comm": runner.comm_s,
                              "transfers": len(runner.transfers)})
        p2p = ping_pong(rt.ctx, (args["micro"], args["seq"], args["d_model"]))
        out[schedule] = {"pp_rank": rt.ctx.pp_rank, "steps": steps, "p2p_s": p2p, "vp": rt.ctx.layout.vp}
    return out


def peak_held(events, vp: int, split: bool) -> float:
    live, peak = 0.0, 0.0
    for kind, *_ in events:
        live += 1.0 / vp if kind == "F" else -1.0 / vp if kind == ("W" if split else "B") else 0.0
        peak = max(peak, live)
    return peak


def analyse(schedule: str, per_rank: list[dict], pp: int, m: int) -> dict:
    from gpt3d.parallel.pipeline.schedules import build_schedule
    from gpt3d.parallel.pipeline.simulator import Costs, simulate
    from gpt3d.planner.schedule import bubble_fraction
    vp = per_rank[0][schedule]["vp"]
    split = schedule in ("zbh1", "zbv")
    nsteps = len(per_rank[0][schedule]["steps"])
    bubbles, spans, sims, costs = [], [], [], []
    p2p = max(r[schedule]["p2p_s"] for r in per_rank)
    for i in range(nsteps):
        events = [r[schedule]["steps"][i]["events"] for r in per_rank]
        start = min(e[3] for ev in events for e in ev)
        end = max(e[4] for ev in events for e in ev)
        span = end - start
        spans.append(span)
        bubbles.append(statistics.mean(1 - r[schedule]["steps"][i]["busy"] / span for r in per_rank))
        durations = {k: [e[4] - e[3] for ev in events for e in ev if e[0] == k] for k in "FBW"}
        f = statistics.mean(durations["F"])
        b = statistics.mean(durations["B"])
        w = statistics.mean(durations["W"]) if split else 0.0
        sims.append(simulate(build_schedule(schedule, pp, m, vp), Costs(f, b, w, p2p)).makespan)
        costs.append((f * vp, b * vp, w * vp))  # per stage
    peak = max(peak_held(r[schedule]["steps"][-1]["events"], vp, split) for r in per_rank)
    return {"bubble": statistics.median(bubbles), "span": statistics.median(spans),
            "sim": statistics.median(sims), "formula": bubble_fraction(pp, m, vp, schedule if vp == 1 or split else
                                                                      "1f1b"),
            "p2p": p2p, "peak": peak, "fbw": [statistics.median(c[i] for c in costs) for i in range(3)],
            "transfers": max(r[schedule]["steps"][-1]["transfers"] for r in per_rank)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pp", type=int, default=4)
    parser.add_argument("--m", type=int, default=8, help="micro-batches per step")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro", type=int, default=2, help="micro-batch size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--schedules", nargs="*", default=list(SCHEDULES))
    args = parser.parse_args()
    if args.quick:
        args.d_model, args.seq, args.steps = 128, 64, 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from gpt3d.launch.spawn import spawn
    spec = {"schedules": args.schedules, "pp": args.pp, "m": args.m, "d_model": args.d_model, "seq": args.seq,
            "micro": args.micro, "layers": 2 * args.pp, "warmup": 1, "steps": args.steps}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    per_rank = spawn(worker, args.pp, spec, collect=True)
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    rows = {s: analyse(s, per_rank, args.pp, args.m) for s in args.schedules}
    print(f"\npp {args.pp}, m {args.m}, {2 * args.pp} layers of d {args.d_model}, seq {args.seq}, micro-batch "
          f"{args.micro}, fp32, 1 thread per rank; {os.cpu_count()} cores, load average {load_before:.1f} before / "
          f"{load_after:.1f} after ({elapsed:.0f} s)")
    header = (f"{'schedule':<12}{'step ms':>9}{'bubble':>8}{'vs 1f1b':>9}{'sim ms':>8}{'sim/meas':>9}{'formula':>9}"
              f"{'peak act':>9}{'p2p ms':>8}{'batches':>9}  F / B / W ms per stage")
    print(header)
    print("-" * len(header))
    base = rows.get("1f1b")
    for s, r in rows.items():
        ratio = f"{r['bubble'] / base['bubble']:.2f}x" if base and base["bubble"] > 0 else "-"
        print(f"{s:<12}{1e3 * r['span']:>9.1f}{r['bubble']:>8.1%}{ratio:>9}{1e3 * r['sim']:>8.1f}"
              f"{r['sim'] / r['span']:>9.2f}{r['formula']:>9.1%}{r['peak']:>9.2g}{1e3 * r['p2p']:>8.2f}"
              f"{r['transfers']:>9}  " + " / ".join(f"{1e3 * x:.1f}" for x in r["fbw"]))


if __name__ == "__main__":
    main()
