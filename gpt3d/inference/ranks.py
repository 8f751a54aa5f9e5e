"""Run a per-rank function on tp x pp ranks: inside a launcher's job (torchrun / srun / mpirun), in this process for
one rank, or on spawned local gloo ranks. Shared by `gpt3d generate` and `gpt3d eval`."""
from __future__ import annotations

import datetime
import os
from typing import Any, Callable

import torch
import torch.distributed as dist


def _entry(rank: int, world_size: int, fn: Callable, args: tuple) -> Any:
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=600))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return fn(rank, world_size, *args)


def run_on_ranks(fn: Callable, world_size: int, *args) -> Any:
    """fn(rank, world_size, *args) on every rank (torch.distributed initialised for world_size > 1); returns rank 0's
    result. Under a launcher, the other ranks end here; rank 0 calls `finish_ranks()` when it is done."""
    from gpt3d.launch.env import discover_launch, export_torch_env
    from gpt3d.launch.spawn import leave_job, spawn
    launch = discover_launch()
    if launch is not None:
        if launch.world_size != world_size:
            raise ValueError(f"the launcher started {launch.world_size} ranks, but --tp x --pp needs {world_size}")
        export_torch_env(launch)
        result = _entry(launch.rank, world_size, fn, args)
        if launch.rank != 0:
            leave_job()
        return result
    if world_size == 1:
        return fn(0, 1, *args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return spawn(_entry, world_size, fn, args, collect=True)[0]


def finish_ranks() -> None:
    """Under a launcher, rank 0 leaves the job with the others (they wait at a barrier)."""
    from gpt3d.launch.env import discover_launch
    from gpt3d.launch.spawn import leave_job
    if discover_launch() is not None:
        leave_job()


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
