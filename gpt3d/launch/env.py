"""Who am I? Rank, local rank, world size and rendezvous address as set up by an external launcher.

`discover_launch()` reads, in this order of precedence:
1. torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). It wins because `srun torchrun ...` leaves SLURM's
   variables in the environment too, and torchrun's describe the processes it actually started.
2. Open MPI (OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE). It wins over SLURM because `mpirun` inside an sbatch
   job starts its daemons with srun, so every rank also carries SLURM_PROCID/SLURM_NTASKS of that daemon step (one task
   per node), which would be wrong. The CPU torch has no MPI backend: rank 0 picks the address and a free port and
   broadcasts them with mpi4py, and gloo (or NCCL) then initialises with init_method="env://".
3. SLURM srun tasks (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; tasks per node from SLURM_STEP_TASKS_PER_NODE,
   SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE). Master: MASTER_ADDR if the batch script exported it, else the NodeAddr
   of the first host of the node list (`scontrol show hostnames` + `scontrol show node`); port: MASTER_PORT, else derived
   from the job id exactly as launchers/slurm/train.sbatch does, so every task computes the same one.
Anything else -> None: a plain `python -m gpt3d train`, or a rank of gpt3d's own local spawner (GPT3D_SPAWNED=1, which
passes ranks explicitly).
A batch shell that is not an srun task (SLURM_JOB_ID set, SLURM_STEP_ID not) is also None: it is one process.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Literal, Mapping, MutableMapping, Optional

LaunchSource = Literal["torchrun", "slurm", "mpi"]

# MASTER_PORT derived from the SLURM job id; train.sbatch uses the same formula. The range stays below Linux's ephemeral
# ports (32768+) so an outgoing connection cannot already hold it.
PORT_BASE = 20000
PORT_SPAN = 10000


class LaunchError(RuntimeError):
    """The launcher's environment is inconsistent or incomplete; the message names the variable."""


@dataclass(frozen=True)
class LaunchInfo:
    rank: int  # global rank, 0 .. world_size-1
    local_rank: int  # rank among the processes on this node (selects the GPU)
    world_size: int
    local_world_size: int  # processes on this node
    master_addr: str  # where rank 0 listens for the rendezvous
    master_port: int
    source: LaunchSource  # which launcher's variables were used

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise LaunchError(f"{self.source}: rank {self.rank} is outside world size {self.world_size}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise LaunchError(f"{self.source}: local rank {self.local_rank} is outside local world size "
                              f"{self.local_world_size}")
        if not 0 < self.master_port < 65536:
            raise LaunchError(f"{self.source}: master port {self.master_port} is not a TCP port")


def port_from_job_id(job_id: int) -> int:
    """The rendezvous port of SLURM job `job_id` (unique among the 10000 most recent jobs on a node)."""
    return PORT_BASE + job_id % PORT_SPAN


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def discover_launch(environ: Optional[Mapping[str, str]] = None) -> Optional[LaunchInfo]:
    """The launch this process belongs to, or None when no launcher started it.

    Under Open MPI without MASTER_ADDR/MASTER_PORT this is a collective (an mpi4py broadcast): call it on every rank.
    """
    env = os.environ if environ is None else environ
    if env.get("GPT3D_SPAWNED") == "1":  # gpt3d's local spawner (gpt3d/launch/spawn.py) hands ranks over explicitly
        return None
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if "OMPI_COMM_WORLD_RANK" in env and "OMPI_COMM_WORLD_SIZE" in env:
        return _from_open_mpi(env)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and "SLURM_JOB_ID" in env:
        return _from_slurm(env)
    return None


def export_torch_env(info: LaunchInfo, environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Set the variables torch.distributed.init_process_group(init_method="env://") reads."""
    env = os.environ if environ is None else environ
    env["MASTER_ADDR"] = info.master_addr
    env["MASTER_PORT"] = str(info.master_port)
    env["RANK"] = str(info.rank)
    env["WORLD_SIZE"] = str(info.world_size)
    env["LOCAL_RANK"] = str(info.local_rank)
    env["LOCAL_WORLD_SIZE"] = str(info.local_world_size)


# --- torchrun ---------------------------------------------------------------------------------------------------------

def _from_torchrun(env: Mapping[str, str]) -> LaunchInfo:
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in env:
            raise LaunchError(f"RANK and WORLD_SIZE are set but {name} is not: start the job with torchrun, or unset "
                              f"RANK/WORLD_SIZE for a single-process run")
    world = _int(env, "WORLD_SIZE")
    return LaunchInfo(rank=_int(env, "RANK"), local_rank=_int(env, "LOCAL_RANK"), world_size=world,
                      local_world_size=_int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world,
                      master_addr=env["MASTER_ADDR"], master_port=_int(env, "MASTER_PORT"), source="torchrun")


# --- SLURM ------------------------------------------------------------------------------------------------------------

def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed per-node task counts: '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise LaunchError(f"cannot parse SLURM tasks-per-node {text!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _slurm_local_world_size(env: Mapping[str, str]) -> int:
    node = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    # The step's own layout first: an srun inside an allocation may use fewer tasks than the job.
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in env:
            counts = expand_tasks_per_node(env[name])
            if node >= len(counts):
                raise LaunchError(f"SLURM_NODEID={node} but {name}={env[name]!r} lists {len(counts)} nodes")
            return counts[node]
    if "SLURM_NTASKS_PER_NODE" in env:
        return _int(env, "SLURM_NTASKS_PER_NODE")
    raise LaunchError("SLURM task without SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE")


def _scontrol(*args: str) -> str:
    try:
        result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError("scontrol is not on PATH inside the SLURM job; export MASTER_ADDR in the batch script "
                          "(launchers/slurm/train.sbatch does) or add SLURM's bin directory to PATH") from None
    if result.returncode != 0:
        raise LaunchError(f"scontrol {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def slurm_head_address(nodelist: str) -> str:
    """The address of the first node of `nodelist` (its NodeAddr; node names need not resolve, e.g. n[1-2])."""
    hosts = _scontrol("show", "hostnames", nodelist).split()
    if not hosts:
        raise LaunchError(f"scontrol show hostnames {nodelist!r} printed no host")
    match = re.search(r"\bNodeAddr=(\S+)", _scontrol("show", "node", hosts[0]))
    return match.group(1) if match else hosts[0]


def _from_slurm(env: Mapping[str, str]) -> LaunchInfo:
    world_name = "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS"
    world = _int(env, world_name)
    if "MASTER_ADDR" in env:
        addr = env["MASTER_ADDR"]
    else:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise LaunchError("SLURM task without MASTER_ADDR or SLURM_JOB_NODELIST: cannot find rank 0's node")
        addr = slurm_head_address(nodelist)
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else port_from_job_id(_int(env, "SLURM_JOB_ID"))
    return LaunchInfo(rank=_int(env, "SLURM_PROCID"), local_rank=_int(env, "SLURM_LOCALID"), world_size=world,
                      local_world_size=_slurm_local_world_size(env), master_addr=addr, master_port=port,
                      source="slurm")


# --- Open MPI ---------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _own_address(single_node: bool) -> str:
    """An address of this host that the other ranks can reach."""
    if single_node:
        return "127.0.0.1"
    try:
        addr = socket.gethostbyname(socket.gethostname())
    except OSError:
        addr = ""
    if addr and not addr.startswith("127."):
        return addr
    # The hostname maps to loopback (common in /etc/hosts): take the interface of the default route instead.
    # A UDP connect sends nothing; it only selects the outgoing interface.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))
            return sock.getsockname()[0]
    except OSError:
        raise LaunchError("cannot find an address of rank 0's host that other nodes can reach; pass it with "
                          "mpirun -x MASTER_ADDR=<address> -x MASTER_PORT=<port>") from None


def _from_open_mpi(env: Mapping[str, str]) -> LaunchInfo:
    rank, world = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
    local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK") if "OMPI_COMM_WORLD_LOCAL_RANK" in env else 0
    local_world = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") if "OMPI_COMM_WORLD_LOCAL_SIZE" in env else 1
    if "MASTER_ADDR" in env and "MASTER_PORT" in env:  # mpirun -x MASTER_ADDR -x MASTER_PORT: no broadcast needed
        addr, port = env["MASTER_ADDR"], _int(env, "MASTER_PORT")
    else:
        try:
            from mpi4py import MPI  # initialises MPI; finalised automatically at exit
        except ImportError:
            raise LaunchError("started by Open MPI's mpirun, but mpi4py is not installed: pip install mpi4py "
                              "(needed to share rank 0's address), or pass mpirun -x MASTER_ADDR=... -x "
                              "MASTER_PORT=...") from None
        comm = MPI.COMM_WORLD
        if comm.Get_size() != world or comm.Get_rank() != rank:
            raise LaunchError(f"mpi4py sees rank {comm.Get_rank()} of {comm.Get_size()}, the environment says "
                              f"{rank} of {world}: mpi4py is built against a different MPI than the mpirun used")
        mine = (_own_address(local_world == world), _free_port()) if rank == 0 else None
        addr, port = comm.bcast(mine, root=0)
    return LaunchInfo(rank=rank, local_rank=local_rank, world_size=world, local_world_size=local_world,
                      master_addr=addr, master_port=port, source="mpi")
