"""Stopping cleanly before SLURM kills the job: a pre-timeout signal or SIGTERM -> save -> requeue -> exit.

How the training loop uses it (every rank):

    handler = PreemptionHandler().install()
    for step in ...:
        train_step()
        if handler.stop_requested(group):   # collective: every rank gets the same answer at the same step
            save_checkpoint()               # collective; returns once the checkpoint is complete on disk
            if rank == 0:
                requeue_job()               # scontrol requeue $SLURM_JOB_ID (False outside SLURM)
            sys.exit(0)

Install the handler first thing in the rank's process, before importing torch or building the model: a SIGUSR1 that
arrives earlier kills the process (the default action) instead of stopping it cleanly.

The batch script (launchers/slurm/train.sbatch) asks SLURM for `--signal=B:USR1@<seconds>` before the time limit and
forwards that USR1 to the srun step; SLURM's own SIGTERM (scancel, preemption, time limit) reaches every task directly.
The requeued job runs the same script again (SLURM_RESTART_COUNT=1, 2, ...) and training resumes from the newest
complete checkpoint in the run directory (checkpoint.resume: auto).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from types import FrameType
from typing import Any, Mapping, Optional, Sequence

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM)


class RequeueError(RuntimeError):
    """`scontrol requeue` refused; the message carries SLURM's reason."""


class PreemptionHandler:
    """Records that a stop signal arrived. The handler only sets a flag: checkpointing inside a signal handler could
    interrupt a collective halfway and deadlock the other ranks."""

    def __init__(self, signals: Sequence[signal.Signals] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self._received: Optional[signal.Signals] = None
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> "PreemptionHandler":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler.install() must run in the main thread (Python delivers signals there)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> "PreemptionHandler":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._received is None:  # keep the first: it says why we stop
            self._received = signal.Signals(signum)

    @property
    def signal_received(self) -> Optional[signal.Signals]:
        """The first stop signal this process received, or None."""
        return self._received

    def stop_requested(self, group: Any = None) -> bool:
        """True on every rank once any rank received a stop signal.

        With torch.distributed initialised this all-reduces the flag (MAX) over `group` (default: the world), so it must
        be called by every rank of the group at the same point of the loop: then all ranks stop after the same step.
        Without torch.distributed it is this process's own flag.
        """
        local = self._received is not None
        # Never imported -> never initialised: a single process must not pay for importing torch here.
        dist = sys.modules.get("torch.distributed")
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            return local
        import torch

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())


def requeue_job(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Requeue the SLURM job this process runs in (`scontrol requeue $SLURM_JOB_ID`); False when not in a SLURM job.

    SLURM ends the running job (its tasks get SIGTERM, then SIGKILL after KillWait), so call it once, from one rank,
    after the checkpoint is complete. The job must be requeueable (`#SBATCH --requeue`, which train.sbatch sets).
    """
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RequeueError(f"cannot requeue job {job_id}: scontrol is not on PATH") from None
    if result.returncode != 0:
        raise RequeueError(f"scontrol requeue {job_id} failed: {(result.stderr or result.stdout).strip()} "
                           f"(is the job submitted with --requeue?)")
    return True
