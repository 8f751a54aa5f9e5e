"""ZB-V checkpoints. Under ZB-V rank r holds the model chunks of stages r and 2pp-1-r (a V), so rank 0 holds the
embedding, the first and the last layers and the final LayerNorm. A ZB-V run's checkpoint records that placement
(each rank file holds exactly what gpt3d/checkpoint/plan.py says for the layout), resumes bit for bit, resumes in
another schedule and layout, and `gpt3d convert --schedule` reshards it zbv pp2 -> 1f1b pp4 -> zbv pp2 and through
Hugging Face with exact round trips."""
import argparse
from pathlib import Path

import numpy as np
import pytest

from gpt3d.checkpoint import Checkpoint
from gpt3d.checkpoint.convert import convert
from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.checkpoint.plan import TargetLayout, rank_regions

from .helpers import assert_resume_continues, gpt3d, losses, run, train_cmd

ZBV_PP2 = ["--pp", "2", "--set", "parallel.schedule=zbv"]  # tiny-test: 4 layers = 2*pp chunks, 4 micro-batches


@pytest.fixture(scope="module")
def zbv_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zbv") / "run"
    result = run(train_cmd(out, 4, *ZBV_PP2, "--save-interval", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _step2(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "step_00000002"


def _args(src, dst, **kw) -> argparse.Namespace:
    base = dict(src=str(src), dst=str(dst), tp=None, pp=None, vp=None, dp=None, schedule=None, from_format="gpt3d",
                to_format="gpt3d", megatron_format="torch_dist", trusted=False, tag=None, config=None, overrides=[],
                quiet=True)
    base.update(kw)
    return argparse.Namespace(**base)


def _all_tensors(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    ckpt = Checkpoint(path)
    ckpt.verify()
    out = {n: ckpt.read(n) for n in ckpt.tensors if not n.startswith("rng/") and n.startswith(prefix)}
    ckpt.close()
    return out


def _held_by_rank(path: Path) -> dict[tuple[int, int], set[str]]:
    """(tp, pp) -> the model tensors the rank files of those coordinates hold."""
    ckpt = Checkpoint(path)
    out: dict[tuple[int, int], set[str]] = {}
    for name in ckpt.names("model/"):
        for piece in ckpt.tensors[name]["pieces"]:
            info = ckpt.files[piece["file"]]
            out.setdefault((info["tp"], info["pp"]), set()).add(name[len("model/"):])
    return out


def _planned(path: Path) -> dict[tuple[int, int], set[str]]:
    ckpt = Checkpoint(path)
    L = ckpt.layout
    layout = TargetLayout(L["tp"], L["pp"], L["dp"], L["vp"], None, L["schedule"])
    return {(t, p): {name for name, _, _ in rank_regions(ckpt.model_config(), layout, t, p)}
            for t in range(L["tp"]) for p in range(L["pp"])}


def test_zbv_checkpoint_holds_the_v_placement(zbv_run):
    path = _step2(zbv_run)
    ckpt = Checkpoint(path)
    assert (ckpt.layout["pp"], ckpt.layout["vp"], ckpt.layout["schedule"]) == (2, 2, "zbv")
    held = _held_by_rank(path)
    block_rank = {int(n.split(".")[1]): p for (_, p), names in held.items() for n in names if n.startswith("blocks.")}
    assert block_rank == {0: 0, 1: 1, 2: 1, 3: 0}  # the V: stages 0 and 3 on rank 0, stages 1 and 2 on rank 1
    assert {"embed.tok.weight", "final_ln.weight"} <= held[(0, 0)]
    assert held == _planned(path)  # the plan (used by convert) mirrors the trainer's placement
    assert "schedule zbv" in gpt3d("inspect", str(path)).stdout


def test_zbv_resume_is_bit_exact(zbv_run, tmp_path):
    out = tmp_path / "resumed"
    result = run(train_cmd(out, 4, *ZBV_PP2, "--resume", str(_step2(zbv_run))))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 2 with optimizer state" in result.stdout
    reference = losses(zbv_run)
    assert losses(out) == {3: reference[3], 4: reference[4]}  # bit for bit


def test_convert_zbv_to_1f1b_pp4_and_back_is_exact(zbv_run, tmp_path):
    source = _step2(zbv_run)
    pp4, back = tmp_path / "1f1b-pp4", tmp_path / "zbv-pp2"
    convert(_args(source, pp4, pp=4, schedule="1f1b"))
    ckpt = Checkpoint(pp4)
    assert (ckpt.layout["pp"], ckpt.layout["vp"], ckpt.layout["schedule"]) == (4, 1, "1f1b")
    assert ckpt.config["parallel"]["schedule"] == "1f1b" and ckpt.config["parallel"]["vp"] == 1
    held = _held_by_rank(pp4)
    assert {int(n.split(".")[1]): p for (_, p), names in held.items() for n in names if n.startswith("blocks.")} == \
        {0: 0, 1: 1, 2: 2, 3: 3}
    assert held == _planned(pp4)
    convert(_args(pp4, back, pp=2, schedule="zbv"))
    ckpt = Checkpoint(back)
    assert (ckpt.layout["pp"], ckpt.layout["vp"], ckpt.layout["schedule"]) == (2, 2, "zbv")
    assert _held_by_rank(back) == _held_by_rank(source)
    reference, got = _all_tensors(source), _all_tensors(back)
    assert any(n.startswith("optim/exp_avg_sq/") for n in reference) and got.keys() == reference.keys()
    for name, value in reference.items():
        assert np.array_equal(got[name], value), name


def test_convert_zbv_through_hugging_face_is_exact(zbv_run, tmp_path):
    source = _step2(zbv_run)
    pp4, hf, back = tmp_path / "1f1b-pp4", tmp_path / "hf", tmp_path / "zbv-from-hf"
    convert(_args(source, pp4, pp=4, schedule="1f1b"))
    convert(_args(pp4, hf, to_format="hf"))
    convert(_args(hf, back, from_format="hf", pp=2, schedule="zbv", config="tiny-test",
                  overrides=["model.d_model=32", "model.n_layers=4", "model.seq_len=16"]))
    assert Checkpoint(back).layout["schedule"] == "zbv"
    assert _held_by_rank(back) == _held_by_rank(source)
    reference, got = _all_tensors(source, "model/"), _all_tensors(back)
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        assert np.array_equal(got[name], value), name


def test_resume_zbv_checkpoint_as_1f1b_pp4(zbv_run, tmp_path):
    """Another schedule and layout continue the same training (losses equal up to the order of float sums)."""
    assert_resume_continues(_step2(zbv_run), zbv_run, tmp_path / "run", "--pp", "4")


def test_convert_refuses_a_schedule_the_layout_cannot_run(zbv_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"schedule zbv runs exactly 2 model chunks per rank on pp >= 2 ranks, "
                                              r"got pp=2 vp=1"):
        convert(_args(_step2(zbv_run), tmp_path / "bad", vp=1))
    with pytest.raises(CheckpointError, match=r"schedule gpipe runs one model chunk per rank, got vp=2"):
        convert(_args(_step2(zbv_run), tmp_path / "bad", schedule="gpipe", vp=2))
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
