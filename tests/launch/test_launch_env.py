"""discover_launch(): which launcher started this process, from real launchers' environments (no process here) and
from real launchers (torchrun, Open MPI's mpirun) running gloo ranks."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt3d.launch.env import (LaunchError, LaunchInfo, discover_launch, expand_tasks_per_node, export_torch_env,
                              port_from_job_id)

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "allreduce_worker.py"

# What srun sets for task 3 of `--nodes=2 --ntasks-per-node=2` (observed on the localhost cluster, trimmed).
SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
             "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_NODELIST": "n[1-2]",
             "MASTER_ADDR": "10.0.0.1"}


def test_not_under_a_launcher():
    assert discover_launch({}) is None
    assert discover_launch({"PATH": "/usr/bin"}) is None
    # The batch shell of an sbatch job (no step id) is one process, not a rank.
    assert discover_launch({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) is None
    # A rank of gpt3d's local spawner: it gets its rank as an argument, not from a launcher.
    assert discover_launch({"GPT3D_SPAWNED": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}) is None


def test_slurm_task_environment():
    info = discover_launch(SRUN_TASK)
    assert info == LaunchInfo(rank=3, local_rank=1, world_size=4, local_world_size=2, master_addr="10.0.0.1",
                              master_port=port_from_job_id(4242), source="slurm")
    assert info.master_port == 24242
    assert discover_launch({**SRUN_TASK, "MASTER_PORT": "29500"}).master_port == 29500


def test_slurm_uneven_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    env = {**SRUN_TASK, "SLURM_NTASKS": "7", "SLURM_PROCID": "6", "SLURM_LOCALID": "0", "SLURM_NODEID": "3",
           "SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}
    env.pop("SLURM_NTASKS_PER_NODE")
    assert discover_launch(env).local_world_size == 1
    with pytest.raises(LaunchError, match=r"cannot parse SLURM tasks-per-node '2\(y3\)'"):
        expand_tasks_per_node("2(y3)")


def test_torchrun_wins_over_slurm():
    env = {**SRUN_TASK, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}
    assert discover_launch(env) == LaunchInfo(1, 1, 2, 2, "127.0.0.1", 29400, "torchrun")


def test_open_mpi_wins_over_slurm_when_addresses_are_given():
    # mpirun inside an sbatch job: the ranks inherit SLURM_* of the daemon step; OMPI_* describe the real ranks.
    env = {**SRUN_TASK, "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "MASTER_PORT": "29600"}
    assert discover_launch(env) == LaunchInfo(5, 1, 8, 4, "10.0.0.1", 29600, "mpi")


def test_inconsistent_environments_are_named():
    with pytest.raises(LaunchError, match="RANK and WORLD_SIZE are set but LOCAL_RANK is not"):
        discover_launch({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match=r"SLURM_PROCID='x' is not an integer"):
        discover_launch({**SRUN_TASK, "SLURM_PROCID": "x"})
    with pytest.raises(LaunchError, match="slurm: rank 4 is outside world size 4"):
        discover_launch({**SRUN_TASK, "SLURM_PROCID": "4"})


def test_export_torch_env_round_trips():
    info = discover_launch(SRUN_TASK)
    env: dict[str, str] = {}
    export_torch_env(info, env)
    assert env == {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "24242", "RANK": "3", "WORLD_SIZE": "4",
                   "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert discover_launch(env) == LaunchInfo(3, 1, 4, 2, "10.0.0.1", 24242, "torchrun")


def _launcher_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMIX_"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _check_ranks(output: str, world: int, source: str) -> None:
    found = re.findall(rf"RANK (\d) WORLD {world} LOCAL (\d)/{world} SOURCE {source} NODE \S+ MASTER \S+ SUM (\d+)",
                       output)
    assert sorted(int(r) for r, _, _ in found) == list(range(world)), output
    assert {sum_ for _, _, sum_ in found} == {f"{world * (world + 1) // 2}"}
    assert all(r == lr for r, lr, _ in found)  # one node: local rank = rank


@pytest.mark.timeout(120)
def test_torchrun_two_ranks():
    # --standalone: torchrun picks a free rendezvous port and passes it on as MASTER_PORT
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(WORKER)],
                            capture_output=True, text=True, env=_launcher_env(), timeout=110)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_ranks(result.stdout, 2, "torchrun")


@pytest.mark.timeout(150)
def test_mpirun_four_ranks_share_rank0_address_via_mpi4py():
    import mpi4py  # noqa: F401  (installed by launchers/setup_env.sh --test)
    mpirun = shutil.which("mpirun")
    assert mpirun, "Open MPI is missing: apt-get install -y openmpi-bin libopenmpi-dev"
    # As root Open MPI needs --allow-run-as-root; 4 ranks on 2 cores need --oversubscribe; the shared-memory BTL is
    # unreliable in containers, so TCP carries the few bytes mpi4py broadcasts.
    argv = [mpirun, "--oversubscribe", "--mca", "btl", "self,tcp", "-np", "4", sys.executable, str(WORKER)]
    if os.geteuid() == 0:
        argv.insert(1, "--allow-run-as-root")
    result = subprocess.run(argv, capture_output=True, text=True, env=_launcher_env(), timeout=140)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    _check_ranks(result.stdout, 4, "mpi")
