"""`gpt3d cancel JOB`: scancel, or send a job a signal (e.g. USR1 to checkpoint and requeue now)."""
from __future__ import annotations

import argparse
import sys

from .commands import SlurmError, run_slurm
from .status import job_state

# Jobs in these states have no processes left to cancel or signal.
ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id")
    parser.add_argument("--signal", default=None, metavar="SIG",
                        help="send this signal instead of cancelling; USR1 makes a gpt3d job checkpoint and requeue "
                             "itself (sent to the batch shell, which passes it to every rank)")


def run_cancel(args: argparse.Namespace) -> int:
    try:
        # scancel says nothing for a job that already ended; asking scontrol first gives a clear answer.
        state = job_state(args.job).get("JobState", "UNKNOWN")
        if state in ENDED_STATES:
            raise SlurmError(f"job {args.job} has already ended ({state}); nothing to cancel")
        if args.signal:
            run_slurm(["scancel", "--batch", f"--signal={args.signal}", args.job])
            print(f"Sent SIG{args.signal.upper().removeprefix('SIG')} to job {args.job}")
        else:
            run_slurm(["scancel", args.job])
            print(f"Cancelled job {args.job}")
    except SlurmError as exc:
        print(f"gpt3d cancel: error: {exc}", file=sys.stderr)
        return 1
    return 0
