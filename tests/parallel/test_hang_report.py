"""Hang safety: when a rank stops participating, the others do not wait forever. With a short
parallel.comm_timeout_s the waiting rank's point-to-point receive (pipeline) or collective (data-parallel gradient
all-reduce, in shared memory or over gloo) times out; the failure handler of the training loop (gpt3d.train.loop.report_failure) reports the rank,
its coordinates, the last operation per group and the schedule step, and the job exits non-zero. Run as a subprocess
under a hard timeout, so a regression shows as a failure, not a stuck suite."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "hang_worker.py"
TIMEOUT_S = 5  # short, but above the start-up skew of two ranks on a loaded 2-core machine
HARD_TIMEOUT_S = 180  # generous for a loaded machine; a hang would last for rank 1's 600 s sleep

CASES = {
    # pp=2: rank 0 (first stage) waits in the 1F1B steady state for the gradient of its micro-batch.
    "pipeline p2p": (["parallel.pp=2"], "1f1b", "pp: p2p("),
    # dp=2 over gloo: rank 0 waits for the overlapped gradient all-reduce after its backward. In shared memory (the
    # default on one host) every bucket is reduced after backward (its reduction is synchronous), and waits there.
    "data-parallel all-reduce": (["parallel.dp=2"], "gradient reduction", "dp: all_reduce"),
    "data-parallel all-reduce over gloo": (["parallel.dp=2", "parallel.cpu_collectives=gloo"], "gradient reduction",
                                           "dp: all_reduce"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_silent_rank_is_reported_and_the_job_exits(tmp_path, case):
    overrides, schedule_step, operation = CASES[case]
    cmd = [sys.executable, str(WORKER), str(tmp_path), f"parallel.comm_timeout_s={TIMEOUT_S}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=HARD_TIMEOUT_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    report = [line for line in proc.stderr.splitlines() if line.startswith("gpt3d: rank 0 ")]
    assert report, proc.stderr[-3000:]
    line = report[0]
    assert "rank 0 (tp 0, dp 0, pp 0) failed during" in line
    assert f"'{schedule_step}" in line, line  # the schedule step, e.g. '1f1b steady step 1'
    assert operation in line, line  # the operation it was waiting in
    assert "Timed out" in line, line  # the collective's timeout fired: the rank did not wait forever
    # Rank 0 completed the first step with rank 1, and failed in the second, not in set-up.
    assert "rank 1: stops participating before step 2" in proc.stderr
    assert "rank 0: step 1 done" in proc.stderr and "rank 0: step 2 done" not in proc.stderr
