"""End to end: `gpt3d train tiny-test --tp 2 --pp 2 --dp 2` spawns 8 local ranks whose logged losses equal the
single-process run's (same config, same data from the default corpus, same seed), within 1e-5 relative."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt3d.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def train(out: Path, *flags: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "gpt3d", "train", "tiny-test", *flags, "--steps", str(STEPS),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_3d_layout_matches_single_process(tmp_path):
    single = train(tmp_path / "single")
    parallel = train(tmp_path / "2x2x2", "--tp", "2", "--pp", "2", "--dp", "2")
    assert "starting" not in single.stdout
    assert "gpt3d: starting 8 local ranks (tp=2 pp=2 dp=2 vp=1)" in parallel.stdout
    ref, got = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "2x2x2")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-5)
    # The parallel run really communicated over every axis.
    assert all(got[0][f"comm_bytes_{g}"] > 0 for g in ("tp", "pp", "dp", "embedding"))
