"""The local launcher (`gpt3d train --dp 2` without SLURM/torchrun) owns its ranks: SIGTERM sent to it alone reaches
every rank, which save a checkpoint and exit 0, and so does the launcher (no rank left running under PID 1); a rank
that dies is reported in one line naming it and how it ended, and the launcher exits with that status."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from tests.checkpoint.helpers import REPO, env, metrics, train_cmd

SLOWER = ["--set", "model.d_model=64", "--set", "model.seq_len=32", "--dp", "2"]


def start(out) -> tuple[subprocess.Popen, list[psutil.Process]]:
    proc = subprocess.Popen(train_cmd(out, 200, *SLOWER), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    while not metrics(out) or metrics(out)[-1]["step"] < 2:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if any("spawn_main" in part for part in p.cmdline())]
    assert len(ranks) == 2, [p.cmdline() for p in ranks]
    return proc, ranks


def test_sigterm_to_the_launcher_saves_and_stops_every_rank(tmp_path):
    out = tmp_path / "run"
    proc, ranks = start(out)
    try:
        os.kill(proc.pid, signal.SIGTERM)  # the launcher only, as `kill PID` or a scheduler would
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = metrics(out)[-1]["step"]
    assert f"stopped after step {stopped}, saved" in stdout
    assert (out / "checkpoints" / f"step_{stopped:08d}" / "metadata.json").is_file()
    psutil.wait_procs(ranks, timeout=30)
    assert not any(p.is_running() for p in ranks)


def test_a_dead_rank_is_one_line_with_its_signal(tmp_path):
    out = tmp_path / "run"
    proc, ranks = start(out)
    try:
        ranks[1].kill()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGKILL
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("gpt3d train: error: rank ") and last.endswith(
        " was killed by SIGKILL; the other ranks were stopped"), stderr[-3000:]
    # The launcher adds no traceback of its own (the surviving rank may report its broken collective first).
    assert "ProcessExitedException" not in stderr and "launch/spawn.py" not in stderr
    psutil.wait_procs(ranks, timeout=30)
    assert not any(p.is_running() for p in ranks)
