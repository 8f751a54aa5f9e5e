"""PreemptionHandler with real signals in real processes (no SLURM needed), and requeue_job's contract."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt3d.launch.env import discover_launch
from gpt3d.slurm.preemption import PreemptionHandler, RequeueError, requeue_job

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "workers" / "stop_worker.py"

pytestmark = pytest.mark.timeout(90)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _wait_ready(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "worker never became ready"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_only_sets_the_flag_and_the_process_exits_cleanly(tmp_path, sig):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(ready)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    _wait_ready(ready, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.fullmatch(rf"STOPPED step \d+ signal {sig.name}\n", out), out


def test_one_signalled_rank_stops_every_rank_at_the_same_step(tmp_path):
    port = 29000 + os.getpid() % 1000
    procs, readies = [], []
    for rank in range(2):
        readies.append(tmp_path / f"ready-{rank}")
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(readies[-1])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(port))))
    for ready, proc in zip(readies, procs):
        _wait_ready(ready, proc)
    time.sleep(0.3)  # let the ranks run a few steps together
    procs[1].send_signal(signal.SIGUSR1)  # as if only one node got the pre-timeout signal
    outputs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    rank0 = re.fullmatch(r"STOPPED step (\d+) signal none\n", outputs[0][0])
    rank1 = re.fullmatch(r"STOPPED step (\d+) signal SIGUSR1\n", outputs[1][0])
    assert rank0 and rank1, outputs
    assert rank0.group(1) == rank1.group(1), "the all-reduced flag must stop both ranks after the same step"


def test_handler_restores_previous_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler() as handler:
        assert signal.getsignal(signal.SIGUSR1) != before
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert handler.signal_received is signal.SIGUSR1 and handler.stop_requested()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_requeue_outside_slurm_is_a_no_op():
    assert requeue_job({}) is False
    assert discover_launch({}) is None


def test_requeue_of_an_unknown_job_names_slurms_reason(slurm_cluster):
    with pytest.raises(RequeueError, match=r"scontrol requeue 999999 failed: .*Invalid job id specified"):
        requeue_job({"SLURM_JOB_ID": "999999"})
