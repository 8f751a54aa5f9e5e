"""CPU collectives between local ranks: gpt3d's shared-memory path (gpt3d/parallel/shared_memory.py) against gloo's
all-reduce over loopback TCP, in the same processes (for each size: gloo's calls, then the shared-memory calls).

    python benchmarks/collectives.py [--ranks 2] [--sizes-mb 0.001 2 8 25 94] [--reps 20]

Each rank runs one thread (as the CPU training runs do); a time is the mean of `reps` back-to-back all-reduces of
fp32 tensors, after a warm-up, measured on rank 0. 2 MB is a tensor-parallel activation of the peers' model (seq 512,
d 512), 25 MB a data-parallel gradient bucket (parallel.bucket_mb), 94 MB the whole gradient of that model.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from gpt3d.launch.spawn import spawn
from gpt3d.parallel.shared_memory import SharedMemoryCollectives


def _mean_ms(fn, reps: int) -> float:
    fn()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def _rank(rank: int, world: int, sizes_mb: list[float], reps: int) -> list[tuple[float, float, float]]:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    shm = SharedMemoryCollectives.create(dist.group.WORLD, rank, world, 60.0)
    if shm is None:
        raise SystemExit("no shared-memory buffer here (no /dev/shm, or gpt3d._C without shm_barrier)")
    rows = []
    for mb in sizes_mb:
        x = torch.randn(max(1, int(mb * (1 << 20) / 4)))
        n = reps if mb < 16 else max(3, reps // 4)
        gloo_ms = _mean_ms(lambda: dist.all_reduce(x), n)
        shm_ms = _mean_ms(lambda: shm.all_reduce(x), n)
        rows.append((mb, gloo_ms, shm_ms))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[0.001, 2, 8, 25, 94])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    rows = spawn(_rank, args.ranks, args.sizes_mb, args.reps, collect=True)[0]
    print(f"{args.ranks} ranks x 1 thread, fp32 all-reduce, mean of back-to-back calls")
    print("| size MB | gloo ms | shared memory ms | speed-up |")
    print("|---|---|---|---|")
    for mb, gloo_ms, shm_ms in rows:
        print(f"| {mb:g} | {gloo_ms:.3f} | {shm_ms:.3f} | {gloo_ms / shm_ms:.2f}x |")


if __name__ == "__main__":
    main()
