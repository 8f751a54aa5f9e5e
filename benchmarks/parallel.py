"""3D-parallel training of a tiny GPT on this machine, same model and global batch for every layout: step time per
layout (ratio against the first layout, 1x1x1, measured in the same run), bytes communicated per group against the
analytical volume (gpt3d/parallel/volumes.py), and the pipeline bubble measured from the stages' busy time against
the theory (p - 1) / (v*m + p - 1).

    python benchmarks/parallel.py            # 8 layers, d 128, seq 64, global batch 16 (m = 16 / dp), 5 timed steps
    python benchmarks/parallel.py --quick    # smoke run: 2 timed steps
    python benchmarks/parallel.py --layouts 1x1x1 1x2x1 1x2x1vp2   # a subset

Measured bubble of a stage = 1 - (its forward + backward time) / (the pipeline's span: first forward start to last
backward end over all stages, on the shared monotonic clock); the table shows the mean over stages. Every rank runs
one thread. With more ranks than cores the ranks time-share the cores, so "busy" time includes waiting for a core and
the measured bubble is not the schedule's alone: the table prints the number of ranks per core next to it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

LAYOUTS = [  # (tp, pp, dp, vp)
    (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1), (2, 2, 1, 1), (1, 4, 1, 1), (1, 2, 1, 2), (2, 2, 2, 1),
]
GROUPS = ("tp", "pp", "dp", "embedding")


def overrides(layout, batch: int, sequence_parallel: bool, size: tuple[int, int] = (128, 64)) -> list[str]:
    """The same model and global batch for every layout (strong scaling): m = batch / dp micro-batches of 1."""
    tp, pp, dp, vp = layout
    d_model, seq = size
    return ["preset=tiny-test", "model.n_layers=8", f"model.d_model={d_model}", "model.n_heads=4",
            f"model.seq_len={seq}",
            "model.vocab_size=250", "model.vocab_pad_multiple=64", "train.micro_batch_size=1",
            f"train.global_batch_size={batch}", "train.threads=1", f"parallel.tp={tp}", f"parallel.pp={pp}",
            f"parallel.dp={dp}", f"parallel.vp={vp}", f"parallel.sequence_parallel={str(sequence_parallel).lower()}"]


def worker(rank: int, world_size: int, layout, batch: int, warmup: int, steps: int, size=(128, 64)) -> dict:
    from gpt3d.config import load_config
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    cfg = load_config(None, overrides(layout, batch, False, size))
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    trainer = Trainer(cfg, rt)
    rng = np.random.default_rng(0)
    records = []
    for i in range(warmup + steps):
        batch = rng.integers(0, cfg.model.vocab_size, size=(cfg.train.global_batch_size, cfg.train.seq_len + 1))
        result = trainer.train_step(batch)
        if i >= warmup:
            events = trainer.last_runner.events
            records.append({"seconds": result.seconds, "busy": trainer.last_runner.busy_s,
                            "start": min(e[3] for e in events), "end": max(e[4] for e in events),
                            "bytes": dict(result.comm_bytes)})
    return {"pp": rt.ctx.pp_rank, "records": records}


def measure(layout, batch: int, warmup: int, steps: int, size=(128, 64)) -> dict:
    from gpt3d.config import load_config
    from gpt3d.launch.spawn import spawn
    from gpt3d.parallel.volumes import pipeline_bubble, world_volumes
    from gpt3d.train.runtime import check_layout
    tp, pp, dp, vp = layout
    world = tp * pp * dp
    if world == 1:
        per_rank = [worker(0, 1, layout, batch, warmup, steps, size)]
    else:
        per_rank = spawn(worker, world, layout, batch, warmup, steps, size, collect=True)
    cfg = load_config(None, overrides(layout, batch, False, size))
    lay, m = check_layout(cfg, world)
    step_s = statistics.median(max(r["records"][i]["seconds"] for r in per_rank) for i in range(steps))
    measured = {g: sum(r["records"][-1]["bytes"].get(g, 0) for r in per_rank) for g in GROUPS}
    analytical = world_volumes(cfg, lay, m)
    bubbles = []
    for i in range(steps):
        span = max(r["records"][i]["end"] for r in per_rank) - min(r["records"][i]["start"] for r in per_rank)
        by_stage: dict[int, list[float]] = {}
        for r in per_rank:
            by_stage.setdefault(r["pp"], []).append(1.0 - r["records"][i]["busy"] / span)
        bubbles.append(statistics.mean(statistics.mean(v) for v in by_stage.values()))
    return {"world": world, "m": m, "step_s": step_s, "measured": measured, "analytical": analytical,
            "bubble": statistics.median(bubbles), "bubble_theory": pipeline_bubble(pp, m, vp)}


def fmt_bytes(n: int) -> str:
    return "-" if n == 0 else f"{n / 2**20:.2f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences; micro-batches of 1)")
    parser.add_argument("--d-model", type=int, default=128, help="model width (larger: compute dominates latency)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length")
    parser.add_argument("--layouts", nargs="*", help="subset, e.g. 1x2x1 1x2x1vp2 (default: all)")
    args = parser.parse_args()
    layouts = LAYOUTS
    if args.layouts:
        names = {"x".join(map(str, lay[:3])) + (f"vp{lay[3]}" if lay[3] > 1 else ""): lay for lay in LAYOUTS}
        layouts = [names[n] for n in args.layouts]
    warmup, steps = (1, 2) if args.quick else (2, 5)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cores = os.cpu_count() or 1
    rows = []
    for layout in layouts:
        t0 = time.perf_counter()
        rows.append((layout, measure(layout, args.batch, warmup, steps, (args.d_model, args.seq))))
        print(f"  measured {'x'.join(map(str, layout[:3]))}{' vp' + str(layout[3]) if layout[3] > 1 else ''} "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    base = rows[0][1]["step_s"]  # the first layout measured (1x1x1 unless --layouts says otherwise)
    print(f"\ntiny GPT (8 layers, d {args.d_model}, seq {args.seq}, vocab 250), global batch {args.batch} = m micro-batches of 1 x dp, "
          f"fp32, "
          f"{cores} cores, 1 thread per rank")
    header = (f"{'layout':<13}{'m':>4}{'ranks':>6}{'ranks/core':>11}{'step ms':>9}{'vs first':>9}  "
              + "".join(f"{g + ' meas/analyt':>26}" for g in GROUPS) + f"{'bubble':>8}{'theory':>8}")
    print(header)
    print("-" * len(header))
    for layout, r in rows:
        name = "x".join(map(str, layout[:3])) + (f" vp{layout[3]}" if layout[3] > 1 else "")
        cells = ""
        for g in GROUPS:
            meas, ana = r["measured"].get(g, 0), r["analytical"].get(g, 0)
            ratio = f"{100 * meas / ana:.1f}%" if ana else ("ok" if meas == 0 else "??")
            cells += f"{fmt_bytes(meas) + ' / ' + fmt_bytes(ana) + ' ' + ratio:>26}"
        pipelined = layout[1] > 1
        bubble = f"{100 * r['bubble']:.1f}%" if pipelined else "-"
        theory = f"{100 * r['bubble_theory']:.1f}%" if pipelined else "-"
        print(f"{name:<13}{r['m']:>4}{r['world']:>6}{r['world'] / cores:>11.1f}{1e3 * r['step_s']:>9.1f}"
              f"{r['step_s'] / base:>9.2f}  {cells}{bubble:>8}{theory:>8}")


if __name__ == "__main__":
    main()
