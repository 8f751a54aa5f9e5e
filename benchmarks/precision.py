"""Mixed precision on the CPU: peak memory per rank (fp32 vs bf16, measured and predicted) and train-step tokens/s of
bf16 against the old autocast path, all measured in the same run on the `tiny` config.

Three modes, each in fresh processes (one per rank) so that every peak is its own:
  fp32      train.dtype=fp32.
  bf16      train.dtype=bf16: bf16 weights, fp32 main grads, fp32 master + Adam (docs/precision.md).
  autocast  the path gpt3d had before mixed precision (commit 89d8009, gpt3d/parallel/pipeline/runner.py): the fp32
            Trainer with each model chunk's forward under torch.autocast(bf16). It exists only here, by wrapping the
            chunks' forward, to measure the old path honestly on the same code and machine.
Measured per rank: (1) tracked: the peak bytes of live tensors during one training step, counted by a dispatch mode
that sees every tensor the step creates and when its storage is freed, on top of the weights, main grads, masters and
moments that exist before it; (2) RSS: the peak resident set size during the timed training steps (the kernel's
high-water mark, reset after the Trainer is built and has run one warm-up step, so initialisation transients are
excluded) minus the resident set size just before the Trainer was built (torch and gloo loaded; the allocator keeps
freed memory, so RSS sits well above the live tensors); the median step time of those steps, with the
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
import statistics
import time
import warnings

import weakref

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MODES = ("fp32", "bf16", "autocast")
MiB = 1024 ** 2


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the resident set size high-water mark (VmHWM) to the current size


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM (Linux only)")


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages: `existing` tensors plus every storage an op creates while the mode is active,
    until it is freed; `peak` is the most at any op."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.current = 0
        for t in existing:
            self._add(t)
        self.base = self.peak = self.current

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.live or storage.nbytes() == 0:
            return
        self.live[ptr] = storage.nbytes()
        self.current += storage.nbytes()
        self.refs[ptr] = weakref.ref(storage, lambda _, ptr=ptr: self._free(ptr))

    def _free(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)
        self.refs.pop(ptr, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.peak = max(self.peak, self.current)
        return out


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
    reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - start)
    rss = peak_rss() - base
    states = [t for chunk in trainer.chunks for t in chunk.parameters()]
    states += [t for s in trainer.optimizer.states for t in (s.bucket.grad_data, s.master, s.exp_avg, s.exp_avg_sq)]
    tracker = LiveTensorBytes(states)
    with tracker:
        trainer.train_step(batch)
    return {"peak": rss, "tracked": tracker.peak, "step_s": statistics.median(times), "state_bytes": tracker.base,
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
                    if keep_peaks:  # the RSS peak does not depend on the round: keep the smaller measurement
                        for r, old in zip(ranks, keep_peaks):
                            r["peak"] = min(r["peak"], old["peak"])
        tokens = best["fp32"][0]["tokens"]
        print(f"\nlayout tp x pp x dp = {text}")
        print("MiB per rank (rank 0 first)")
        print(f"{'mode':9} {'tokens/s':>9} {'tracked peak':>14} {'RSS peak':>14} {'predicted':>10} "
              f"{'states':>14}")

        def column(ranks, key):
            return " ".join(f"{r[key] / MiB:6.1f}" for r in ranks)
        for mode in MODES:
            ranks = best[mode]
            step = max(r["step_s"] for r in ranks)
            pred = predicted(args.config, mode, layout, args.threads) / MiB
            print(f"{mode:9} {tokens / step:9.0f} {column(ranks, 'tracked'):>14} {column(ranks, 'peak'):>14} "
                  f"{pred:10.1f} {column(ranks, 'state_bytes'):>14}")

        def largest(mode, key):
            return max(r[key] for r in best[mode])
        speed = largest('autocast', 'step_s') / largest('bf16', 'step_s')
        vs_fp32 = largest('bf16', 'tracked') / largest('fp32', 'tracked')
        vs_autocast = largest('bf16', 'tracked') / largest('autocast', 'tracked')
        print(f"bf16 / autocast tokens/s = {speed:.2f}; largest rank's tracked peak: bf16 / fp32 = {vs_fp32:.2f}, "
              f"bf16 / autocast = {vs_autocast:.2f}")
        print("predicted: the planner's weights + grads + optimizer + activations of the first stage; states: the "
              "live weights, main grads, masters and moments")


if __name__ == "__main__":
    main()
