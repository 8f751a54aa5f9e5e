"""Mixed precision on the CPU: peak memory per rank (fp32 vs bf16, measured and predicted) and train-step tokens/s of
bf16 against the old autocast path, all measured in the same run on the `tiny` config.

Three modes, each in fresh processes (one per rank) so that every peak is its own:
  fp32      train.dtype=fp32.
  bf16      train.dtype=bf16: bf16 weights, fp32 main grads, fp32 master + Adam (docs/precision.md).
  autocast  the path gpt3d had before mixed precision (commit 89d8009, gpt3d/parallel/pipeline/runner.py): the fp32
            Trainer with each model chunk's forward under torch.autocast(bf16). It exists only here, by wrapping the
            chunks' forward, to measure the old path honestly on the same code and machine.
Measured per rank: the peak resident set size minus the resident set size just before the Trainer is built (torch and
gloo already loaded), after `--steps` steps; the median step time of those steps (after one warm-up step), with the
modes alternated over `--rounds` rounds and each mode's best round kept (a shared machine is noisy).
Predicted per rank: the planner's memory model (gpt3d.planner.memory.estimate_memory: weights + gradients + optimizer
+ activations; its NCCL communicator buffers do not exist on gloo and are left out), and the exact bytes of the live
Trainer's weights, main grads, masters and moments from the bytes-per-parameter rule.
Usage:
    python benchmarks/precision.py [--config tiny] [--layouts 1x1x1,1x2x1] [--steps 4] [--rounds 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
import warnings

import numpy as np
import torch

MODES = ("fp32", "bf16", "autocast")
MiB = 1024 ** 2


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def with_autocast(chunk: torch.nn.Module) -> None:
    """The old path: this chunk's forward under torch.autocast(bf16), its weights staying fp32."""
    forward = chunk.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast(chunk_device(chunk).type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)
    chunk.forward = autocast_forward


def chunk_device(chunk: torch.nn.Module) -> torch.device:
    return next(chunk.parameters()).device


def config_for(name: str, mode: str, layout: tuple[int, int, int], threads: int):
    from gpt3d.config import load_config
    tp, pp, dp = layout
    dtype = "bf16" if mode == "bf16" else "fp32"
    return load_config(None, [f"preset={name}", f"train.dtype={dtype}", f"parallel.tp={tp}", f"parallel.pp={pp}",
                              f"parallel.dp={dp}", f"train.threads={threads}", "train.progress=false"])


def rank_run(rank: int, world_size: int, name: str, mode: str, layout: tuple[int, int, int], steps: int,
             threads: int) -> dict:
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    warnings.filterwarnings("ignore")
    cfg = config_for(name, mode, layout, threads)
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    if world_size > 1:
        torch.distributed.barrier()
    base = current_rss()
    trainer = Trainer(cfg, rt)
    if mode == "autocast":
        for chunk in trainer.chunks:
            with_autocast(chunk)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.model.vocab_size, size=(cfg.train.global_batch_size, cfg.train.seq_len + 1))
    trainer.train_step(batch)  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - start)
    states = {}
    for s in trainer.optimizer.states:
        for t in (s.bucket.param_data, s.bucket.grad_data, s.master, s.exp_avg, s.exp_avg_sq):
            states[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return {"peak": peak_rss() - base, "step_s": statistics.median(times), "state_bytes": sum(states.values()),
            "params": sum(p.numel() for c in trainer.chunks for p in c.parameters()),
            "tokens": cfg.train.global_batch_size * cfg.train.seq_len}


def predicted(name: str, mode: str, layout: tuple[int, int, int], threads: int) -> float:
    """The planner's bytes for the most loaded rank, less NCCL communicator buffers (gloo has none)."""
    from gpt3d.planner.memory import estimate_memory
    from gpt3d.train.runtime import check_layout
    cfg = config_for(name, mode, layout, threads)
    tp, pp, dp = layout
    _, num_micro = check_layout(cfg, tp * pp * dp)
    m = estimate_memory(cfg.model, tp, pp, dp, 1, cfg.train.micro_batch_size, cfg.train.seq_len, num_micro,
                        cfg.parallel.sequence_parallel, cfg.parallel.recompute, cfg.parallel.distributed_optimizer,
                        dtype="bf16" if mode == "bf16" else "fp32")
    return m.params + m.grads + m.optimizer + m.activations


def run_mode(name: str, mode: str, layout: tuple[int, int, int], steps: int, threads: int) -> list[dict]:
    from gpt3d.launch.spawn import spawn
    world = layout[0] * layout[1] * layout[2]
    return spawn(rank_run, world, name, mode, layout, steps, threads, collect=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--layouts", default="1x1x1,1x2x1", help="tp x pp x dp, comma-separated")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"config {args.config}; {args.steps} steps per run after one warm-up; best of {args.rounds} rounds; "
          f"{args.threads} thread(s) per rank; {os.cpu_count()} cores (shared: numbers vary with the machine's load)")
    for text in args.layouts.split(","):
        layout = tuple(int(x) for x in text.split("x"))
        best: dict[str, list[dict]] = {}
        for _ in range(args.rounds):
            for mode in MODES:
                ranks = run_mode(args.config, mode, layout, args.steps, args.threads)
                if mode not in best or max(r["step_s"] for r in ranks) < max(r["step_s"] for r in best[mode]):
                    keep_peaks = best.get(mode)
                    best[mode] = ranks
                    if keep_peaks:  # the memory peak does not depend on the round: keep the smaller measurement
                        for r, old in zip(ranks, keep_peaks):
                            r["peak"] = min(r["peak"], old["peak"])
        tokens = best["fp32"][0]["tokens"]
        print(f"\nlayout tp x pp x dp = {text}")
        print(f"{'mode':9} {'tokens/s':>9} {'peak RSS per rank (MiB)':>28} {'predicted (MiB)':>16} "
              f"{'weights+grads+optimizer (MiB)':>30}")
        for mode in MODES:
            ranks = best[mode]
            step = max(r["step_s"] for r in ranks)
            peaks = " ".join(f"{r['peak'] / MiB:6.1f}" for r in ranks)
            pred = predicted(args.config, mode, layout, args.threads) / MiB
            states = " ".join(f"{r['state_bytes'] / MiB:5.1f}" for r in ranks)
            print(f"{mode:9} {tokens / step:9.0f} {peaks:>28} {pred:16.1f} {states:>30}")
        ratio = max(r["step_s"] for r in best["autocast"]) / max(r["step_s"] for r in best["bf16"])
        mem = max(r["peak"] for r in best["bf16"]) / max(r["peak"] for r in best["fp32"])
        mem_ac = max(r["peak"] for r in best["bf16"]) / max(r["peak"] for r in best["autocast"])
        print(f"bf16 tokens/s / autocast tokens/s = {ratio:.2f}; bf16 peak / fp32 peak = {mem:.2f}; "
              f"bf16 peak / autocast peak = {mem_ac:.2f} (largest rank)")


if __name__ == "__main__":
    main()
