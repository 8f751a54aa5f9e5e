"""`gpt3d submit CONFIG --nodes N --gpus-per-node G ...`: check the layout, render the batch script, sbatch it."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional

from gpt3d.config import ConfigError, load_config
from gpt3d.config.run import resolve_config_path

from .clusters import ClusterConfig, load_cluster
from .commands import SlurmError, run_slurm
from .layout import JobLayout, SubmitLayoutError, check_memory, resolve_layout
from .render import (DEFAULT_SIGNAL_SECONDS, DEFAULT_TEMPLATE, JobSpec, RenderError, render_script, time_limit_seconds,
                     train_command)

DEFAULT_CLUSTER = "a100-80gb"
EXIT_BAD_INPUT = 2  # nothing was submitted because the request is wrong
EXIT_SLURM_FAILED = 1  # the request was fine but SLURM refused or could not be reached


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config: a YAML path or a name from configs/ (e.g. gpt3-175b)")
    parser.add_argument("--nodes", type=int, required=True, help="nodes to allocate")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs (= ranks) per node; default: the cluster preset's (8)")
    parser.add_argument("--cluster", default=None,
                        help=f"cluster preset from configs/clusters/ or a YAML path (GPU model for the memory check, "
                             f"NCCL env, setup lines); default: {DEFAULT_CLUSTER}")
    parser.add_argument("--partition", help="SLURM partition (sbatch --partition)")
    parser.add_argument("--account", help="SLURM account to charge (sbatch --account)")
    parser.add_argument("--time", help="time limit, e.g. 48:00:00 or 2-00:00:00 (sbatch --time)")
    parser.add_argument("--qos", help="quality of service (sbatch --qos)")
    parser.add_argument("--constraint", help="node features, e.g. a100&ib (sbatch --constraint)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, passed to the training command too (repeatable)")
    parser.add_argument("--out", default=None,
                        help="run directory on a shared file system (logs, checkpoints); default: runs/JOB_NAME")
    parser.add_argument("--job-name", default=None, help="default: gpt3d-CONFIG_NAME")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="default: the cluster preset's")
    parser.add_argument("--signal-seconds", type=int, default=DEFAULT_SIGNAL_SECONDS,
                        help="send the checkpoint-and-requeue signal this many seconds before the time limit "
                             f"(default {DEFAULT_SIGNAL_SECONDS})")
    parser.add_argument("--no-requeue", dest="requeue", action="store_false",
                        help="do not mark the job requeueable")
    parser.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="shell line run before srun, after the cluster preset's (e.g. 'module load cuda')")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable exported before srun (repeatable)")
    parser.add_argument("--cpu-only", action="store_true",
                        help="request tasks without GPUs and skip the GPU memory check (CPU clusters, tests)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python interpreter the ranks run (default: this one; must exist on every node)")
    parser.add_argument("--command", default=None,
                        help="run this shell command on every rank instead of `gpt3d train` (e.g. a smoke test)")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="print the batch script; submit nothing")


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"gpt3d submit: error: {message}", file=sys.stderr)
    return code


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            raise RenderError(f"--env {pair!r}: expected NAME=VALUE")
        name, value = pair.split("=", 1)
        env[name] = value
    return env


def _build_spec(args: argparse.Namespace) -> tuple[JobSpec, JobLayout, Optional[ClusterConfig], str]:
    """Everything checked and resolved; raises ConfigError / SubmitLayoutError / RenderError on bad input."""
    cluster = None
    if args.cluster is not None or not args.cpu_only:
        cluster = load_cluster(args.cluster or DEFAULT_CLUSTER)
    for flag, value in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node),
                        ("--cpus-per-task", args.cpus_per_task)):
        if value is not None and value < 1:
            raise RenderError(f"{flag} {value}: must be >= 1 (leave it out to use the cluster preset's value)")
    if args.time is not None:
        time_limit_seconds(args.time)
    gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else (
        cluster.gpus_per_node if cluster else None)
    if gpus_per_node is None:
        raise RenderError("--gpus-per-node is required with --cpu-only (it is the number of ranks per node)")
    config_path = resolve_config_path(args.config).resolve()
    run = load_config(config_path, args.overrides)
    layout = resolve_layout(run, args.nodes, gpus_per_node)
    memory_note = "GPU memory check skipped (--cpu-only)"
    if not args.cpu_only:
        assert cluster is not None
        memory_note = f"fits {cluster.gpu}: {check_memory(run, layout, cluster.gpu).describe()}"
    job_name = args.job_name or f"gpt3d-{config_path.stem}"
    run_dir = Path(args.out or Path("runs") / job_name).resolve()
    command = args.command or train_command(args.python, config_path, run_dir, args.overrides,
                                            layout.tp, layout.pp, layout.dp)
    env = dict(cluster.env) if cluster else {}
    env.update(_parse_env(args.env))
    spec = JobSpec(
        job_name=job_name, nodes=args.nodes, tasks_per_node=gpus_per_node, run_dir=run_dir, command=command,
        workdir=Path.cwd(), gpus=not args.cpu_only,
        cpus_per_task=args.cpus_per_task if args.cpus_per_task is not None else (
            cluster.cpus_per_task if cluster and not args.cpu_only else 1),
        partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint, time=args.time,
        signal_seconds=args.signal_seconds, requeue=args.requeue, env=env,
        setup=[*(cluster.setup if cluster else []), *args.setup],
        sbatch_extra=cluster.sbatch if cluster else (), srun_extra=cluster.srun if cluster else (),
    )
    return spec, layout, cluster, memory_note


def _first_missing_ancestor(path: Path) -> Optional[Path]:
    """The top-most directory of `path` that does not exist yet (what to remove if submission fails)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def run(args: argparse.Namespace) -> int:
    try:
        spec, layout, _cluster, memory_note = _build_spec(args)
        script = render_script(spec, args.template)
    except (ConfigError, SubmitLayoutError, RenderError) as exc:
        return _fail(f"{exc}\nnothing was submitted")
    summary = f"{layout.describe()}; {memory_note}"
    if args.dry_run:
        print(script, end="")
        print(f"gpt3d submit: dry run, nothing submitted ({summary})", file=sys.stderr)
        return 0

    # The run directory must exist before the job starts: SLURM opens the log files in it.
    created = _first_missing_ancestor(spec.run_dir)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The script goes in on stdin, so a refused job leaves no file behind.
        output = run_slurm(["sbatch", "--parsable"], input_text=script)
    except SlurmError as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        return _fail(f"{exc}\nnothing was submitted", EXIT_SLURM_FAILED)
    job_id = output.strip().split(";")[0]
    script_path = spec.run_dir / f"slurm-{job_id}.sbatch"
    script_path.write_text(script)
    print(f"Submitted batch job {job_id}: {summary}")
    print(f"  script: {script_path}")
    print(f"  stdout: {spec.run_dir / f'slurm-{job_id}.out'}")
    print(f"  stderr: {spec.run_dir / f'slurm-{job_id}.err'}")
    print(f"  run directory (checkpoints): {spec.run_dir}")
    print(f"  status: gpt3d status {job_id}    cancel: gpt3d cancel {job_id}")
    return 0
