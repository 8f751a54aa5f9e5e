"""A private, real SLURM cluster on localhost for the tests: munged, slurmctld and two slurmd posing as nodes n1, n2.

Debian's slurmd accepts `-N NAME`, so two slurmd processes on distinct ports act as two nodes of one machine. State, logs
and the config live in a temporary directory; ports are picked free so a cluster someone else runs is not disturbed.
`stop()` shuts everything down (also after a failed test) and stops munged only if this harness started it.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
REQUIRED_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "munged", "munge")
NODES = ("n1", "n2")
CPUS_PER_NODE = 2
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"}

SLURM_CONF = """\
ClusterName=gpt3dtest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Re-evaluate pending jobs every second: a requeued job becomes eligible again without a 30-60 s scheduler pause.
SchedulerParameters=bf_interval=1,sched_interval=1
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd-%n.pid
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
{node_lines}
PartitionName=low Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=15
PartitionName=high Nodes=n[1-2] MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""
NODE_LINE = ("NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs={cpus} Boards=1 "
             "SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN")


class ClusterError(RuntimeError):
    pass


def _run(argv: list[str], env: Optional[dict] = None, check: bool = True, timeout: float = 60,
         input_text: Optional[str] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, input=input_text)
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ensure_slurm_installed() -> None:
    """Install Debian's SLURM and munge when a tool is missing (the tests need the real daemons)."""
    if all(shutil.which(tool) or Path("/usr/sbin", tool).exists() for tool in REQUIRED_TOOLS):
        return
    if os.geteuid() != 0:
        raise ClusterError(f"SLURM/munge are missing and installing them needs root: "
                           f"sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], env=env, timeout=600)
    _run(["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES], env=env, timeout=900)


def parse_record(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(\S*)", text)}


class LocalSlurmCluster:
    def __init__(self, root: Optional[Path] = None) -> None:
        # A short path: slurmd puts unix sockets under the spool directory (108-byte limit).
        self.root = Path(root or tempfile.mkdtemp(prefix="gpt3d-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._started_munged = False
        self._job_counter = 0

    # --- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "LocalSlurmCluster":
        ensure_slurm_installed()
        for sub in ("run", "state", "log", "jobs", *(f"spool/{n}" for n in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        node_lines = "\n".join(NODE_LINE.format(name=n, port=p, cpus=CPUS_PER_NODE) for n, p in zip(NODES, node_ports))
        self.conf.write_text(SLURM_CONF.format(dir=self.root, ctld_port=ctld_port, node_lines=node_lines))
        self._start_munged()
        _run(["slurmctld", "-f", str(self.conf)], env=self.env)  # daemonises
        for node in NODES:
            _run(["slurmd", "-f", str(self.conf), "-N", node], env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = _run(["sinfo", "-h", "-N", "-p", "low", "-o", "%T"], env=self.env, check=False).stdout.split()
            if len(states) == len(NODES) and all(s == "idle" for s in states):
                return self
            time.sleep(0.3)
        raise ClusterError(f"nodes not idle after {timeout:.0f} s (sinfo: {states}); logs:\n{self.logs_tail()}")

    def _start_munged(self) -> None:
        if _run(["bash", "-c", "munge -n | unmunge"], check=False).returncode == 0:
            return  # someone's munged already answers: share it, never stop it
        key = Path("/etc/munge/munge.key")
        if not key.exists() or key.stat().st_size == 0:
            _run(["mungekey", "--create"])
        _run(["chown", "munge:munge", str(key)])
        key.chmod(0o400)
        _run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "755", "/run/munge"])
        _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
        self._started_munged = True
        _run(["bash", "-c", "munge -n | unmunge"])

    def stop(self, remove: bool = True) -> None:
        """Cancel every job, shut the daemons down, wait for them to exit; kill what remains."""
        if self.conf.exists():
            _run(["scancel", "--full", "--user=root"], env=self.env, check=False)
            _run(["scontrol", "shutdown"], env=self.env, check=False)
        pids = []
        for pid_file in (self.root / "run").glob("*.pid"):
            try:
                pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 15
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, 9)
        if self._started_munged:
            pid_file = Path("/run/munge/munged.pid")
            if pid_file.exists():
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 15)
                for _ in range(25):
                    if not _alive(pid):
                        break
                    time.sleep(0.2)
            self._started_munged = False
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def logs_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # --- jobs ---------------------------------------------------------------------------------------------------------
    def submit(self, script: str, *sbatch_args: str) -> int:
        """sbatch a script text; jobs without their own --output log to ROOT/jobs/job-%j.out."""
        self._job_counter += 1
        path = self.root / "jobs" / f"script-{self._job_counter}.sh"
        path.write_text(script)
        args = list(sbatch_args)
        if "--output" not in script and not any(a.startswith("--output") for a in args):
            args.append(f"--output={self.root}/jobs/job-%j.out")
        out = _run(["sbatch", "--parsable", *args, str(path)], env=self.env).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        return parse_record(_run(["scontrol", "show", "job", str(job_id)], env=self.env).stdout)

    def wait(self, job_id: int, timeout: float = 90.0, restarts: int = 0) -> dict[str, str]:
        """Wait until the job finished (after at least `restarts` requeues); return its scontrol record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if record.get("JobState") in FINISHED_STATES and int(record.get("Restarts", "0")) >= restarts:
                return record
            time.sleep(0.5)
        raise ClusterError(f"job {job_id} not finished after {timeout:.0f} s: {self.job(job_id)}\n{self.logs_tail()}")

    def output(self, job_id: int) -> str:
        path = Path(self.job(job_id)["StdOut"])
        return path.read_text(errors="replace") if path.exists() else ""

    def run_job(self, script: str, *sbatch_args: str, timeout: float = 90.0) -> tuple[int, str]:
        """Submit, wait for the end, return (job id, its stdout); raises when the job did not complete."""
        job_id = self.submit(script, *sbatch_args)
        record = self.wait(job_id, timeout)
        output = self.output(job_id)
        if record["JobState"] != "COMPLETED":
            err = Path(record.get("StdErr", ""))
            errors = err.read_text(errors="replace") if err.is_file() and str(err) != record["StdOut"] else ""
            raise ClusterError(f"job {job_id} ended {record['JobState']} (exit {record.get('ExitCode')}):\n"
                               f"{output}\n{errors}")
        return job_id, output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
