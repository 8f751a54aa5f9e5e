"""Start N local ranks without a launcher (gloo on CPU, one GPU each on a GPU machine).

Used by `gpt3d train --tp/--pp/--dp` when no launcher environment is present, and by the distributed tests.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import traceback
from multiprocessing import connection as mp_connection
from typing import Any, Callable

import torch.multiprocessing as mp

# Stop signals the launcher passes on: SLURM/`kill` send them to this process only, and each rank's
# PreemptionHandler turns them into "finish the step, save, exit 0". (Ctrl-C's SIGINT already reaches the whole
# foreground process group.)
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


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


class RankFailed(RuntimeError):
    """A spawned rank exited non-zero or was killed; the message is one line naming it, `exit_status` is what a
    launcher should exit with (the rank's code, or 128 + signal)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def spawn(fn: Callable, world_size: int, *args, collect: bool = False) -> list[Any] | None:
    """Run fn(rank, world_size, *args) in `world_size` fresh processes. SIGTERM and SIGUSR1 sent to this process
    are forwarded to every rank, and it waits for them (they save, then exit). When a rank fails (its own error is
    printed by the rank), the others cannot finish a collective without it: they are killed and RankFailed names
    the first failure in one line. With collect=True, returns each rank's (picklable) return value."""
    port = free_port()
    manager = mp.Manager() if collect else None
    results = manager.dict() if collect else None
    try:
        context = mp.start_processes(_entry, args=(fn, world_size, port, args, results), nprocs=world_size,
                                     join=False, start_method="spawn")
        with _forwarding_signals(context.pids()):
            try:
                _wait_all(context.processes)
            except BaseException:  # Ctrl-C or a failed rank: no rank outlives the launcher
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                        process.join()
                raise
        return [results[r] for r in range(world_size)] if collect else None
    finally:
        if manager is not None:
            manager.shutdown()


def _wait_all(processes: list) -> None:
    alive = dict(enumerate(processes))
    while alive:
        ready = set(mp_connection.wait([p.sentinel for p in alive.values()]))
        for rank, process in list(alive.items()):
            if process.sentinel not in ready:
                continue
            process.join()
            del alive[rank]
            if process.exitcode != 0:
                for other in alive.values():
                    other.kill()
                for other in alive.values():
                    other.join()
                raise _failure(rank, process)


def _failure(rank: int, process) -> RankFailed:
    code = process.exitcode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return RankFailed(f"rank {rank} (pid {process.pid}) was killed by {name}; the other ranks were stopped",
                          128 - code)
    return RankFailed(f"rank {rank} (pid {process.pid}) exited with code {code} (its error is above); the other "
                      f"ranks were stopped", code)


class _forwarding_signals:
    """While active, FORWARDED signals to this process are sent on to `pids` (main thread only: Python delivers
    signals there)."""

    def __init__(self, pids: list[int]):
        self.pids, self.previous = list(pids), {}

    def _forward(self, signum, frame) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
