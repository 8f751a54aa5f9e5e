"""Start N local ranks without a launcher (gloo on CPU, one GPU each on a GPU machine).

Used by `gpt3d train --tp/--pp/--dp` when no launcher environment is present, and by the distributed tests.
"""
from __future__ import annotations

import os
import socket
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, args: tuple, results: Any) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world_size),
                       "GPT3D_SPAWNED": "1"})
    try:
        out = fn(rank, world_size, *args)
        if results is not None:
            results[rank] = out
    except BaseException:
        traceback.print_exc()
        raise
    leave_job()


def leave_job() -> None:
    """End this rank cleanly: every rank reaches a barrier, the process groups are destroyed together, and the
    process ends with os._exit(0). Skipping the interpreter's teardown matters: at a normal exit,
    static destructors of the gloo transport can find a live thread and abort the rank ("terminate called without an
    active exception") after its work is done, failing an otherwise finished run."""
    import sys

    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    mpi = sys.modules.get("mpi4py.MPI")  # under mpirun: Open MPI treats an exit without MPI_Finalize as a failure
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable, world_size: int, *args, collect: bool = False) -> list[Any] | None:
    """Run fn(rank, world_size, *args) in `world_size` fresh processes; re-raises if any rank fails. With
    collect=True, returns each rank's (picklable) return value."""
    port = free_port()
    manager = mp.Manager() if collect else None
    results = manager.dict() if collect else None
    try:
        mp.start_processes(_entry, args=(fn, world_size, port, args, results), nprocs=world_size, join=True,
                           start_method="spawn")
        return [results[r] for r in range(world_size)] if collect else None
    finally:
        if manager is not None:
            manager.shutdown()
