"""`--resume PATH` at an older step of the same run would replace its newer checkpoints and metrics: refused,
changing nothing, unless --overwrite (which drops them first)."""
from __future__ import annotations

from .helpers import losses, run, train_cmd


def test_resume_at_an_older_step_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    assert run(train_cmd(out, 4, "--save-interval", "2")).returncode == 0
    ckpts = out / "checkpoints"
    older = ckpts / "step_00000002"
    before = (out / "metrics.jsonl").read_text()

    refused = run(train_cmd(out, 4, "--save-interval", "2", "--resume", str(older)))
    assert refused.returncode == 2
    assert refused.stderr == (f"gpt3d train: error: --resume: the checkpoint is at step 2 but {out} has newer "
                              f"checkpoints (step_00000004); pass --overwrite to continue from step 2 and drop them "
                              f"(and the metrics after step 2), or choose another --out to branch the run\n")
    assert (out / "metrics.jsonl").read_text() == before and (ckpts / "step_00000004").is_dir()

    again = run(train_cmd(out, 3, "--resume", str(older), "--overwrite"))
    assert again.returncode == 0, again.stderr
    # The closing line lists what was written: no tensorboard/ when train.tensorboard is off (as in tiny-test).
    assert f"gpt3d: run directory {out} (metrics.jsonl, config.yaml, checkpoints/)" in again.stdout
    assert sorted(losses(out)) == [1, 2, 3]
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_")) == ["step_00000002",
                                                                                     "step_00000003"]
