"""Run `python -m gpt3d train|convert|inspect` as subprocesses of a tiny config and read their metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "train.threads=1", "--set", "model.d_model=32", "--set", "model.n_layers=4",
        "--set", "model.seq_len=16", "--set", "parallel.bucket_mb=0.01"]


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    out["OMP_NUM_THREADS"] = "1"
    out["MKL_NUM_THREADS"] = "1"
    out.update(extra)
    return out


def train_cmd(out: Path, steps: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "gpt3d", "train", "tiny-test", "--out", str(out), "--steps", str(steps), *TINY,
            *flags]


def gpt3d(*args: str, timeout: float = 600, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt3d", *args], cwd=REPO, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def run(cmd: list[str], timeout: float = 600, **extra_env) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    return result


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written when we looked
            break
    return out


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir)}


def assert_resume_continues(step2_checkpoint: Path, reference_run: Path, out: Path, *flags: str) -> None:
    """`gpt3d train --resume` of a step-2 checkpoint with `flags` (another layout or schedule) runs steps 3 and 4 with
    the reference run's losses, up to the order of float sums."""
    result = run(train_cmd(out, 4, *flags, "--resume", str(step2_checkpoint)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 2 with optimizer state" in result.stdout
    got, reference = losses(out), losses(reference_run)
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=0)


def run_and_kill_after(cmd: list[str], run_dir: Path, step: int, timeout: float = 600) -> int:
    """Start `cmd` in its own session, SIGKILL its whole process group once metrics.jsonl shows `step`; returns the
    last step logged before the kill."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            records = metrics(run_dir)
            if records and records[-1]["step"] >= step:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                raise AssertionError(f"run ended before step {step}: {proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    return metrics(run_dir)[-1]["step"]
