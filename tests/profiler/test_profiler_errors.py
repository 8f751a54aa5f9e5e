"""Bad input: one clear error naming the problem, before any process starts or anything is written."""
import argparse

import psutil
import pytest

from gpt3d.profiler import cli


def run_cli(capsys, *argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    # Earlier tests in the session may leave helper processes (e.g. torch.compile's worker pool): only new ones count.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rc = cli.run(parser.parse_args(list(argv)))
    err = capsys.readouterr().err
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert started == [], f"a rank was started for invalid input: {started}"
    return rc, err


@pytest.mark.parametrize("argv,message", [
    (["tiny-test", "--tp", "3"], "model.n_heads=4 is not divisible by tp=3"),
    (["tiny-test", "--pp", "3"], "model.n_layers=4 cannot be split evenly into pp*vp=3*1=3 stages"),
    (["tiny-test", "--dp", "3"], "train.global_batch_size=8 is not micro_batch_size=2 x num_micro_batches x dp=3"),
    (["tiny-test", "--steps", "2", "--warmup", "2"], "--steps 2 must exceed --warmup 2"),
    (["tiny-test", "--steps", "1", "--warmup", "3"], "--steps 1 must exceed --warmup 3"),
    (["tiny-test", "--peak-tflops", "0"], "--peak-tflops: must be positive"),
    (["no-such-config"], "config: no such file 'no-such-config'"),
])
def test_bad_input_fails_before_starting(tmp_path, capsys, argv, message):
    out = tmp_path / "profile"
    rc, err = run_cli(capsys, *argv, "--out", str(out))
    assert rc == 2
    assert err.startswith("gpt3d profile: error: ") and message in err, err
    assert not out.exists()


def test_layout_must_fit_the_launchers_world(tmp_path, capsys, monkeypatch):
    """Inside a torchrun job of 3 processes, tp=2 cannot tile the world."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GPT3D_SPAWNED", raising=False)
    rc, err = run_cli(capsys, "tiny-test", "--tp", "2", "--out", str(tmp_path / "p"))
    assert rc == 2
    assert "tp=2 x pp=1 x dp=1 = 2 ranks, but the world has 3" in err, err


def test_existing_profile_is_kept(tmp_path, capsys):
    out = tmp_path / "profile"
    out.mkdir()
    (out / "profile.json").write_text("earlier profile")
    rc, err = run_cli(capsys, "tiny-test", "--out", str(out))
    assert rc == 2
    assert "already holds profile.json; pass --overwrite" in err
    assert (out / "profile.json").read_text() == "earlier profile"
