"""Jobs on the private localhost SLURM cluster (2 nodes x 2 CPUs): the rendered batch script runs real ranks."""
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cli import gpt3d_cancel, gpt3d_status, gpt3d_submit

TESTS = Path(__file__).resolve().parents[1]
ALLREDUCE = TESTS / "launch" / "allreduce_worker.py"
PREEMPT = Path(__file__).resolve().parent / "workers" / "preempt_worker.py"

pytestmark = pytest.mark.timeout(180)


def test_unknown_partition_surfaces_sbatch_error_and_submits_nothing(slurm_cluster, tmp_path):
    run_dir = tmp_path / "new" / "run"
    before = _queue(slurm_cluster)
    result = gpt3d_submit("tiny-test", "--nodes", "2", "--gpus-per-node", "1", "--cpu-only", "--partition", "nosuch",
                          "--out", str(run_dir))
    assert result.code == 1 and result.out == ""
    assert "sbatch --parsable failed" in result.err
    assert "Invalid partition name specified" in result.err, result.err
    assert "nothing was submitted" in result.err
    assert not (tmp_path / "new").exists(), "the run directory created for the job must be removed again"
    assert _queue(slurm_cluster) == before


def test_rendered_script_runs_four_gloo_ranks_over_two_nodes(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = gpt3d_submit("tiny-test", "--nodes", "2", "--gpus-per-node", "2", "--cpu-only", "--partition", "low",
                          "--out", str(run_dir), "--job-name", "allreduce",
                          "--command", f"{sys.executable} {ALLREDUCE}")
    assert result.code == 0, result.err
    job_id = result.job_id
    assert f"stdout: {run_dir}/slurm-{job_id}.out" in result.out
    assert (run_dir / f"slurm-{job_id}.sbatch").read_text().startswith("#!/bin/bash")
    record = slurm_cluster.wait(job_id, timeout=120)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert record["JobState"] == "COMPLETED", log + (run_dir / f"slurm-{job_id}.err").read_text()
    ranks = {int(m.group(1)): m for m in re.finditer(
        r"RANK (\d) WORLD 4 LOCAL (\d)/2 SOURCE slurm NODE (n\d) MASTER 127\.0\.0\.1:(\d+) SUM (\d+)", log)}
    assert sorted(ranks) == [0, 1, 2, 3], log
    assert {m.group(5) for m in ranks.values()} == {"10"}  # 1 + 2 + 3 + 4
    assert {r: ranks[r].group(3) for r in ranks} == {0: "n1", 1: "n1", 2: "n2", 3: "n2"}
    assert {ranks[r].group(2) for r in (0, 2)} == {"0"} and {ranks[r].group(2) for r in (1, 3)} == {"1"}
    assert {int(m.group(4)) for m in ranks.values()} == {20000 + job_id % 10000}
    status = gpt3d_status(str(job_id))
    assert status.code == 0 and "JobState: COMPLETED" in status.out and "allreduce" in status.out


def test_usr1_makes_every_rank_stop_and_the_job_requeue_itself(slurm_cluster, tmp_path):
    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    ready.mkdir()
    result = gpt3d_submit("tiny-test", "--nodes", "2", "--gpus-per-node", "1", "--cpu-only", "--out", str(run_dir),
                          "--job-name", "preempt", "--env", f"READY_DIR={ready}",
                          "--command", f"{sys.executable} {PREEMPT}")
    assert result.code == 0, result.err
    job_id = result.job_id
    deadline = time.monotonic() + 90
    while len(list(ready.iterdir())) < 2:
        assert time.monotonic() < deadline, (run_dir / f"slurm-{job_id}.out").read_text()
        assert slurm_cluster.job(job_id)["JobState"] in ("PENDING", "RUNNING")
        time.sleep(0.3)
    # What SLURM does before the time limit (--signal=B:USR1@...): signal the batch shell, which forwards to the ranks.
    signalled = gpt3d_cancel(str(job_id), "--signal", "USR1")
    assert signalled.code == 0, signalled.err
    record = slurm_cluster.wait(job_id, timeout=120, restarts=1)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", log
    assert "batch shell received SIGUSR1" in log
    # from marker files: srun can lose the tasks' last output lines when the requeue ends the step
    stops = [m.groups() for f in sorted(ready.iterdir()) if (m := re.fullmatch(r"stop-rank-(\d)-step-(\d+)-signal-(\w+)",
                                                                                 f.name))]
    assert sorted(r for r, _, _ in stops) == ["0", "1"], log
    assert len({step for _, step, _ in stops}) == 1, f"ranks stopped at different steps: {stops}"
    # The stop is all-reduced: a rank whose forwarded signal had not arrived yet stops with the others (signal none,
    # seen in CI), but some rank must have received it.
    assert {signal for _, _, signal in stops} <= {"SIGUSR1", "none"} and "SIGUSR1" in {s for _, _, s in stops}, log
    assert (ready / f"requeuing-rank-0-step-{stops[0][1]}").exists()  # rank 0 asked for it after the common stop
    assert sorted(re.findall(r"RESUMED rank (\d) restart 1", log)) == ["0", "1"], log
    assert "(restart 1)" in log  # the batch script ran again, appending to the same log


def test_status_and_cancel_of_a_running_job(slurm_cluster, tmp_path):
    job_id = slurm_cluster.submit("#!/bin/bash\n#SBATCH --job-name=sleeper\nsleep 300\n")
    listing = gpt3d_status()
    assert listing.code == 0 and re.search(rf"\b{job_id}\b.*sleeper", listing.out), listing.out
    cancelled = gpt3d_cancel(str(job_id))
    assert cancelled.code == 0 and f"Cancelled job {job_id}" in cancelled.out
    assert slurm_cluster.wait(job_id, timeout=30)["JobState"] == "CANCELLED"
    again = gpt3d_cancel(str(job_id))
    assert again.code == 1 and f"job {job_id} has already ended (CANCELLED); nothing to cancel" in again.err
    unknown = gpt3d_cancel("999999")
    assert unknown.code == 1 and "Invalid job id specified" in unknown.err
    bad = gpt3d_status("12ab")
    assert bad.code == 1 and "'12ab' is not a SLURM job id" in bad.err


def _queue(cluster) -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=cluster.env).stdout


def test_mpirun_inside_a_two_node_job_uses_open_mpi_ranks(slurm_cluster):
    import mpi4py  # noqa: F401  (installed by launchers/setup_env.sh --test)
    # Open MPI starts its daemons with srun (one task per node), so each rank also carries SLURM_PROCID = its node
    # index and SLURM_NTASKS = 2: discover_launch must take Open MPI's numbers instead.
    script = (f"#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=2\n"
              f"mpirun --allow-run-as-root --mca btl self,tcp {sys.executable} {ALLREDUCE}\n"
              f"mpirun --allow-run-as-root --mca btl self,tcp bash -c "
              f"'echo SLURMVARS $OMPI_COMM_WORLD_RANK $SLURM_PROCID $SLURM_NTASKS'\n")
    _, log = slurm_cluster.run_job(script, timeout=150)
    ranks = {int(m.group(1)): m for m in re.finditer(
        r"RANK (\d) WORLD 4 LOCAL (\d)/2 SOURCE mpi NODE (n\d) MASTER \S+ SUM (\d+)", log)}
    assert sorted(ranks) == [0, 1, 2, 3], log
    assert {m.group(4) for m in ranks.values()} == {"10"}
    assert {r: ranks[r].group(3) for r in ranks} == {0: "n1", 1: "n1", 2: "n2", 3: "n2"}
    assert "SLURMVARS 3 1 2" in log  # what SLURM's variables would have claimed for MPI rank 3
