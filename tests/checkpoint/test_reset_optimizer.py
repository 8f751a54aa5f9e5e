"""A checkpoint whose optimizer has taken steps but whose Adam moments are missing is refused before any rank starts
(resuming would silently restart Adam and lose its step count) unless the user asks for it with --reset-optimizer."""
from __future__ import annotations

import json

from gpt3d.checkpoint.format import META_SHA, metadata_digest

from .helpers import run, train_cmd


def test_missing_moments_need_reset_optimizer(tmp_path):
    first = tmp_path / "first"
    assert run(train_cmd(first, 2, "--save-interval", "2")).returncode == 0
    ckpt = first / "checkpoints" / "step_00000002"
    meta = json.loads((ckpt / "metadata.json").read_text())
    assert meta["trainer"]["optimizer"]["step_count"] == 2
    meta["tensors"] = {n: t for n, t in meta["tensors"].items() if not n.startswith("optim/")}
    meta[META_SHA] = metadata_digest(meta)  # a consistent checkpoint that lacks the moments
    (ckpt / "metadata.json").write_text(json.dumps(meta))

    refused = run(train_cmd(tmp_path / "second", 3, "--resume", str(ckpt)))
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"gpt3d train: error: {ckpt}/metadata.json: does not match this run's config: "
                                     f"no Adam moments for ['model/"), refused.stderr
    assert "although the optimizer had taken 2 steps; pass --reset-optimizer to continue with fresh moments and a "\
           "new step count" in refused.stderr and refused.stderr.count("\n") == 1
    assert not (tmp_path / "second").exists()

    reset = run(train_cmd(tmp_path / "second", 3, "--resume", str(ckpt), "--reset-optimizer"))
    assert reset.returncode == 0, reset.stderr
    assert "at step 2 with fresh Adam moments (step count 0)" in reset.stdout
