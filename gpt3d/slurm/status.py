"""`gpt3d status [JOB]`: your queued/running jobs (squeue), or one job in detail (scontrol show job)."""
from __future__ import annotations

import argparse
import getpass
import re
import sys

from .commands import SlurmError, run_slurm

# scontrol fields worth showing for a training job, in this order.
JOB_FIELDS = ("JobId", "JobName", "JobState", "Reason", "Restarts", "RunTime", "TimeLimit", "Partition", "NumNodes",
              "NumTasks", "NodeList", "SubmitTime", "StartTime", "StdOut", "StdErr", "WorkDir")
SQUEUE_FORMAT = "%.12i %.24j %.10T %.10M %.10l %.6D %R"


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="job id; without it: all of your jobs in the queue")
    parser.add_argument("--all-users", action="store_true", help="list every user's jobs, not only yours")


def parse_scontrol_record(text: str) -> dict[str, str]:
    """`scontrol show job` output -> {field: value} (values never contain spaces except Command=, kept whole)."""
    fields: dict[str, str] = {}
    for match in re.finditer(r"(\w[\w:/]*)=(.*?)(?=\s+\w[\w:/]*=|\s*$)", text.strip(), flags=re.S):
        fields.setdefault(match.group(1), match.group(2).strip())
    return fields


def job_state(job_id: str) -> dict[str, str]:
    """The scontrol record of one job (running, pending, or finished within SLURM's MinJobAge)."""
    if not re.fullmatch(r"\d+(_\d+)?(\.\w+)?", job_id):
        raise SlurmError(f"{job_id!r} is not a SLURM job id (expected a number such as 1234)")
    return parse_scontrol_record(run_slurm(["scontrol", "show", "job", job_id]))


def run_status(args: argparse.Namespace) -> int:
    try:
        if args.job:
            record = job_state(args.job)
            for name in JOB_FIELDS:
                if name in record:
                    print(f"{name:>10}: {record[name]}")
        else:
            user = [] if args.all_users else ["--user", getpass.getuser()]
            print(run_slurm(["squeue", *user, "--format", SQUEUE_FORMAT]), end="")
    except SlurmError as exc:
        print(f"gpt3d status: error: {exc}", file=sys.stderr)
        return 1
    return 0
