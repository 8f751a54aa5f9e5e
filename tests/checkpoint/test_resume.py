"""Exact resume: a run killed with SIGKILL and rerun continues bit-identically; a crash inside a save leaves the
previous checkpoint usable; a checkpoint of tp2 x pp2 x dp2 (distributed optimizer) resumes in other layouts."""
import shutil

import pytest

from gpt3d.checkpoint import Checkpoint, latest_checkpoint

from .helpers import assert_resume_continues, gpt3d, losses, metrics, run, run_and_kill_after, train_cmd

STEPS = 8
SLOWER = ["--set", "model.d_model=64", "--set", "model.seq_len=32"]  # steps long enough to kill between them
LAYOUTS = {
    "single": [],
    "dp2-distributed-optimizer": ["--dp", "2", "--set", "parallel.distributed_optimizer=true"],
    "tp2-pp2": ["--tp", "2", "--pp", "2"],
    # bf16: the sharded fp32 master weights are what the checkpoint stores and restores
    "bf16-dp2-distributed-optimizer": ["--dp", "2", "--set", "parallel.distributed_optimizer=true",
                                       "--set", "train.dtype=bf16"],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigkill_then_rerun_is_bit_identical(tmp_path, layout):
    flags = [*SLOWER, *LAYOUTS[layout], "--save-interval", "2"]
    reference = run(train_cmd(tmp_path / "reference", STEPS, *flags))
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    cmd = train_cmd(killed_dir, STEPS, *flags)
    last = run_and_kill_after(cmd, killed_dir, 3)
    assert last < STEPS, "the run finished before it could be killed"
    resumed = run(cmd)  # the same command again: resume auto
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "with optimizer state" in resumed.stdout
    assert [r["step"] for r in metrics(killed_dir)] == list(range(1, STEPS + 1))
    assert losses(killed_dir) == losses(tmp_path / "reference")  # bit for bit


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(out, 6, "--save-interval", "2")
    crashed = run(cmd, GPT3D_TEST_KILL_DURING_SAVE="4")
    assert crashed.returncode != 0
    root = out / "checkpoints"
    assert (root / ".tmp-step_00000004").is_dir() and not (root / "step_00000004").exists()
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert latest_checkpoint(root) == root / "step_00000002"
    Checkpoint(root / "step_00000002").verify()
    inspect = gpt3d("inspect", str(out))
    assert inspect.returncode == 0 and "step 2 " in inspect.stdout
    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_00000002 at step 2" in resumed.stdout
    assert not (root / ".tmp-step_00000004").exists()
    reference = run(train_cmd(tmp_path / "reference", 6))
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert losses(out) == losses(tmp_path / "reference")
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004", "step_00000006"]


def test_existing_run_without_checkpoint_still_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    first = run(train_cmd(out, 2, "--resume", "none", "--set", "checkpoint.save_on_exit=false"))
    assert first.returncode == 0, first.stderr[-2000:]
    again = run(train_cmd(out, 2, "--set", "checkpoint.save_on_exit=false"))
    assert again.returncode == 2 and "already holds metrics.jsonl, config.yaml" in again.stderr


CROSS = {"tp1-pp4-dp2": ["--tp", "1", "--pp", "4", "--dp", "2"], "tp4-pp1-dp2": ["--tp", "4", "--pp", "1", "--dp", "2"],
         "tp1-pp1-dp1": ["--tp", "1", "--pp", "1", "--dp", "1"]}


@pytest.fixture(scope="module")
def tp2pp2dp2(tmp_path_factory):
    out = tmp_path_factory.mktemp("cross") / "source"
    result = run(train_cmd(out, 4, "--tp", "2", "--pp", "2", "--dp", "2", "--save-interval", "2",
                           "--set", "parallel.distributed_optimizer=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("target", list(CROSS))
def test_resume_in_another_layout(tp2pp2dp2, tmp_path, target):
    ckpt = Checkpoint(tp2pp2dp2 / "checkpoints" / "step_00000002")
    assert ckpt.layout["distributed_optimizer"] and any(
        p["flat"] for p in ckpt.tensors["optim/exp_avg/blocks.0.mlp.fc1.weight"]["pieces"])  # shards cut params
    assert_resume_continues(ckpt.path, tp2pp2dp2, tmp_path / "run", *CROSS[target])


def test_sigterm_saves_and_exits_zero_then_resumes_exactly(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from .helpers import REPO, env
    out = tmp_path / "run"
    cmd = train_cmd(out, STEPS, *SLOWER)  # no save interval: only the signal makes a checkpoint
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not metrics(out) or metrics(out)[-1]["step"] < 2:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = metrics(out)[-1]["step"]
    assert stopped < STEPS and f"stopped after step {stopped}, saved" in stdout
    assert latest_checkpoint(out / "checkpoints").name == f"step_{stopped:08d}"
    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run(train_cmd(tmp_path / "reference", STEPS, *SLOWER))
    assert losses(out) == losses(tmp_path / "reference")


def test_async_save_writes_the_same_checkpoints(tmp_path):
    import numpy as np
    sync = run(train_cmd(tmp_path / "sync", 4, "--save-interval", "2"))
    async_ = run(train_cmd(tmp_path / "async", 4, "--save-interval", "2", "--set", "checkpoint.async_save=true"))
    assert sync.returncode == 0 and async_.returncode == 0, async_.stderr[-3000:]
    for step in ("step_00000002", "step_00000004"):
        a = Checkpoint(tmp_path / "sync" / "checkpoints" / step)
        b = Checkpoint(tmp_path / "async" / "checkpoints" / step)
        b.verify()
        assert a.tensors.keys() == b.tensors.keys()
        for name in a.tensors:
            assert np.array_equal(a.read(name), b.read(name)), name
    assert losses(tmp_path / "sync") == losses(tmp_path / "async")
