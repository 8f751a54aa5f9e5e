"""A crash at every point of a checkpoint commit keeps the checkpoint `latest` names: a subprocess commits a save and
os._exit()s right after one of its renames (GPT3D_TEST_KILL_IN_COMMIT); the survivor is found, opens, verifies, holds
the weights of the step it names, and the next save cleans up. Also: auto-resume trusts metadata, not names."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.checkpoint.format import Checkpoint, RankFileWriter, write_metadata
from gpt3d.checkpoint.store import commit, latest_checkpoint, prepare_tmp, step_dir_name

REPO = Path(__file__).resolve().parents[2]
POINTS = ("aside", "swap", "pointer", "delete")


def write_step(root: Path, step: int, value: float) -> Path:
    """A real (tiny) checkpoint of `step`, written into its tmp directory, not yet committed."""
    tmp = prepare_tmp(root, step)
    w = RankFileWriter(tmp, "tp00-pp00-dp00.safetensors")
    w.add("model/w", "F32", (2, 3), (0, 0), (2, 3), np.full((2, 3), value, np.float32))
    files, tensors = w.write()
    write_metadata(tmp, {"step": step, "layout": {}, "config": {}, "trainer": {}, "files": files, "tensors": tensors})
    return tmp


def committed(root: Path, step: int, value: float) -> None:
    commit(write_step(root, step, value), root, step, keep_last=2)


def crash_commit(root: Path, step: int, value: float, point: str) -> None:
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from tests.checkpoint.test_store_crash import committed; "
            "committed(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(root), str(step), str(value)],
                          env={"GPT3D_TEST_KILL_IN_COMMIT": point, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr  # it died at `point`


def survivor(root: Path) -> tuple[int, float]:
    ckpt = Checkpoint(latest_checkpoint(root))
    ckpt.verify()
    return ckpt.step, float(ckpt.read("model/w")[0, 0])


@pytest.mark.parametrize("point", POINTS)
def test_crash_while_saving_the_same_step_again(tmp_path, point):
    root = tmp_path / "checkpoints"
    committed(root, 4, 1.0)
    committed(root, 8, 2.0)
    crash_commit(root, 8, 3.0, point)  # step 8 saved again (a rerun with --overwrite)
    step, value = survivor(root)
    assert step == 8 and value == (2.0 if point == "aside" else 3.0)
    committed(root, 12, 4.0)  # the next save recovers and cleans up
    assert sorted(p.name for p in root.iterdir()) == ["latest", step_dir_name(8), step_dir_name(12)]
    assert survivor(root) == (12, 4.0)
    assert float(Checkpoint(root / step_dir_name(8)).read("model/w")[0, 0]) == value


@pytest.mark.parametrize("point", ("swap", "pointer", "delete"))
def test_crash_while_saving_a_new_step(tmp_path, point):
    root = tmp_path / "checkpoints"
    committed(root, 4, 1.0)
    committed(root, 8, 2.0)
    crash_commit(root, 12, 3.0, point)  # the commit that would also drop step 4 (keep_last=2)
    assert survivor(root) == (12, 3.0)
    committed(root, 16, 4.0)
    assert sorted(p.name for p in root.iterdir()) == ["latest", step_dir_name(12), step_dir_name(16)]


def test_auto_resume_refuses_a_directory_whose_metadata_says_another_step(tmp_path):
    root = tmp_path / "checkpoints"
    committed(root, 4, 1.0)
    committed(root, 8, 2.0)
    (root / step_dir_name(4)).rename(root / step_dir_name(40))  # renamed by hand: its weights are step 4's
    with pytest.raises(CheckpointError, match=rf"^{root / step_dir_name(40)}: the directory name says step 40 but "
                                              rf"metadata.json records step 4; a checkpoint directory was renamed or "
                                              rf"copied by hand: rename it back to step_00000004 or pass --resume "
                                              rf"PATH explicitly$"):
        latest_checkpoint(root)
    meta = json.loads((root / step_dir_name(40) / "metadata.json").read_text())
    assert meta["step"] == 4
