"""Rendering the SLURM batch script from launchers/slurm/train.sbatch (string.Template with `@{name}` fields)."""
from __future__ import annotations

import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from gpt3d.launch.env import PORT_BASE, PORT_SPAN

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "launchers" / "slurm" / "train.sbatch"
DEFAULT_SIGNAL_SECONDS = 300  # time a 175B checkpoint needs to reach a parallel file system, with margin

_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # SLURM's D-HH:MM:SS, HH:MM:SS, MM:SS, MM
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def time_limit_seconds(text: str) -> int:
    """SLURM's --time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; minutes and seconds
    below 60 (and hours below 24 after a day count), a limit above zero."""
    if not _TIME_RE.match(text):
        raise RenderError(f"--time {text!r}: use SLURM's format, e.g. 48:00:00 or 2-00:00:00")
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:  # HH:MM:SS
        hours, minutes, seconds = parts
    else:  # MM or MM:SS
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    minutes_first = not days and len(parts) < 3  # MM or MM:SS: the minutes may exceed 59 (SLURM's "MM")
    if (not minutes_first and minutes > 59) or seconds > 59 or (days and hours > 23):
        raise RenderError(f"--time {text!r}: minutes and seconds must be 0-59 (hours 0-23 after a day count), "
                          f"e.g. 48:00:00 or 2-00:00:00")
    total = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise RenderError(f"--time {text!r}: the time limit must be above zero, e.g. 48:00:00")
    return total


class _SbatchTemplate(string.Template):
    """Only `@{name}` is a field: a bash script is full of `$`, and `@` alone ("$@", "${a[@]}") stays literal."""
    delimiter = "@"
    pattern = r"@(?:(?P<escaped>(?!))|\{(?P<braced>[a-z_]+)\}|(?P<named>(?!))|(?P<invalid>(?!)))"


class RenderError(ValueError):
    """The job description cannot become a valid batch script; the message names the field."""


@dataclass
class JobSpec:
    job_name: str  # --job-name
    nodes: int  # --nodes
    tasks_per_node: int  # ranks per node = GPUs per node
    run_dir: Path  # logs (slurm-%j.out/err) and the run's checkpoints; must be on a file system all nodes share
    command: str  # what srun starts on every task, already shell-quoted
    workdir: Path  # --chdir: where the job runs
    gpus: bool = True  # request --gpus-per-node=tasks_per_node; False on CPU-only (test) clusters
    cpus_per_task: int = 1
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time: Optional[str] = None  # --time, e.g. 48:00:00
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS  # --signal=B:USR1@<seconds> before the time limit
    requeue: bool = True
    env: Mapping[str, str] = field(default_factory=dict)  # exported before srun
    setup: Sequence[str] = ()  # shell lines before srun (module load, container setup, ...)
    sbatch_extra: Sequence[str] = ()  # more #SBATCH options, e.g. --exclusive
    srun_extra: Sequence[str] = ()  # more srun options, e.g. --container-image=...

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.job_name):
            raise RenderError(f"job name {self.job_name!r}: use letters, digits and _ . + - only")
        if self.nodes < 1:
            raise RenderError(f"--nodes must be >= 1, got {self.nodes}")
        if self.tasks_per_node < 1:
            raise RenderError(f"--gpus-per-node must be >= 1, got {self.tasks_per_node}")
        if any(c.isspace() for c in str(self.run_dir)) or any(c.isspace() for c in str(self.workdir)):
            # #SBATCH --output=... cannot quote a path, so whitespace would silently split it
            raise RenderError(f"run directory {str(self.run_dir)!r} / work directory {str(self.workdir)!r}: "
                              f"SLURM cannot take paths containing whitespace; pick another --out")
        if self.cpus_per_task < 1:
            raise RenderError(f"--cpus-per-task must be >= 1, got {self.cpus_per_task}")
        if self.signal_seconds < 0:
            raise RenderError(f"--signal-seconds must be >= 0, got {self.signal_seconds}")
        if self.time is not None:
            limit = time_limit_seconds(self.time)
            if limit <= self.signal_seconds:
                raise RenderError(f"--time {self.time} ({limit} s) leaves no training time before the stop signal "
                                  f"{self.signal_seconds} s before the end; raise --time or lower --signal-seconds")
        for name, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                            ("constraint", self.constraint)):
            if value is not None and (not value or any(c in value for c in "\n\r")):
                raise RenderError(f"--{name} {value!r}: must be a non-empty single line")
        for key in self.env:
            if not _ENV_NAME_RE.match(key):
                raise RenderError(f"environment variable name {key!r} is not valid in a shell")
        if any("\n" in line for line in (*self.sbatch_extra, *self.srun_extra)):
            raise RenderError("extra sbatch/srun options must be single lines")


def sbatch_options(spec: JobSpec) -> list[str]:
    """The #SBATCH options, in the order they appear in the script."""
    run_dir = spec.run_dir
    options = [
        f"--job-name={spec.job_name}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={spec.tasks_per_node}",
    ]
    if spec.gpus:
        options.append(f"--gpus-per-node={spec.tasks_per_node}")
    options.append(f"--cpus-per-task={spec.cpus_per_task}")
    for name in ("partition", "account", "qos", "constraint", "time"):
        value = getattr(spec, name)
        if value is not None:
            options.append(f"--{name}={value}")
    options += [
        f"--chdir={spec.workdir}",
        f"--output={run_dir}/slurm-%j.out",
        f"--error={run_dir}/slurm-%j.err",
        "--open-mode=append",  # a requeued job appends to the same log instead of truncating it
        f"--signal=B:USR1@{spec.signal_seconds}",
    ]
    if spec.requeue:
        options.append("--requeue")
    options += list(spec.sbatch_extra)
    return options


def render_script(spec: JobSpec, template: Path = DEFAULT_TEMPLATE) -> str:
    """The batch script for `spec`."""
    spec.validate()
    try:
        text = template.read_text()
    except OSError as exc:
        raise RenderError(f"cannot read the batch template {template}: {exc.strerror}") from None
    fields = {
        "sbatch_lines": "\n".join(f"#SBATCH {option}" for option in sbatch_options(spec)),
        "setup_lines": "\n".join(spec.setup) if spec.setup else "# (none)",
        "env_exports": "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in spec.env.items()) or "# (none)",
        "tasks_per_node": str(spec.tasks_per_node),
        "srun_options": "".join(" " + shlex.quote(o) for o in spec.srun_extra),
        "command": spec.command,
        "run_dir": shlex.quote(str(spec.run_dir)),
        "port_base": str(PORT_BASE),
        "port_span": str(PORT_SPAN),
    }
    try:
        return _SbatchTemplate(text).substitute(fields)
    except KeyError as exc:
        raise RenderError(f"batch template {template} uses an unknown field @{{{exc.args[0]}}}; "
                          f"known fields: {', '.join(sorted(fields))}") from None


def train_command(python: str, config: Path, run_dir: Path, overrides: Sequence[str], tp: int, pp: int,
                  dp: int) -> str:
    """`python -m gpt3d train CONFIG --out RUN_DIR --tp T --pp P --dp D --set ...`, shell-quoted."""
    argv = [python, "-m", "gpt3d", "train", str(config), "--out", str(run_dir),
            "--tp", str(tp), "--pp", str(pp), "--dp", str(dp)]
    for override in overrides:
        argv += ["--set", override]
    return shlex.join(argv)
