"""`gpt3d submit` of a real training run on the localhost cluster: 2 nodes x 2 ranks (tp 2 inside a node, dp 2 across
nodes, the way the 175B preset places its ranks) give the same losses as the same layout spawned locally."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cli import gpt3d_submit

REPO = Path(__file__).resolve().parents[2]
STEPS = 2  # step 2 already depends on the all-reduced update of step 1
OVERRIDES = ("--set", f"train.steps={STEPS}", "--set", "parallel.tp=2")

pytestmark = pytest.mark.timeout(240)


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["loss"] for r in records]


def test_two_node_training_matches_a_local_run(slurm_cluster, tmp_path):
    slurm_dir = tmp_path / "slurm-run"
    result = gpt3d_submit("tiny-test", "--nodes", "2", "--gpus-per-node", "2", "--cpu-only", "--out",
                          str(slurm_dir), "--job-name", "train2x2", *OVERRIDES)
    assert result.code == 0, result.err
    job_id = result.job_id
    assert "tp=2 x pp=1 x dp=2" in result.out

    # Meanwhile, the reference: the same layout started by gpt3d's local spawner.
    local_dir = tmp_path / "local-run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    local = subprocess.run([sys.executable, "-m", "gpt3d", "train", "tiny-test", "--out", str(local_dir),
                            "--tp", "2", "--dp", "2", *OVERRIDES], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=200)
    assert local.returncode == 0, local.stderr[-3000:]

    record = slurm_cluster.wait(job_id, timeout=200)
    log = (slurm_dir / f"slurm-{job_id}.out").read_text() + (slurm_dir / f"slurm-{job_id}.err").read_text()
    assert record["JobState"] == "COMPLETED", log[-5000:]
    assert record["NodeList"] == "n[1-2]"
    assert _losses(slurm_dir) == _losses(local_dir)
