"""`gpt3d convert` / `gpt3d inspect` on a real trained checkpoint: layout round trips are bit-exact for model and
optimizer state, Hugging Face export/import round trips, and bad input gets its one error with nothing written."""
import argparse
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt3d.checkpoint import Checkpoint
from gpt3d.checkpoint.convert import convert
from gpt3d.checkpoint.errors import CheckpointError

from .helpers import gpt3d, run, train_cmd

GRID = [(1, 1, 1), (2, 2, 1), (1, 4, 1), (4, 1, 1), (2, 1, 1), (1, 2, 2)]  # (tp, pp, vp)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run(train_cmd(out, 3, "--save-interval", "3"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "checkpoints" / "step_00000003"


def _args(src, dst, **kw) -> argparse.Namespace:
    base = dict(src=str(src), dst=str(dst), tp=None, pp=None, vp=None, dp=None, from_format="gpt3d",
                to_format="gpt3d", megatron_format="torch_dist", trusted=False, tag=None, config=None, overrides=[],
                quiet=True)
    base.update(kw)
    return argparse.Namespace(**base)


def _all_tensors(path: Path) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(path)
    ckpt.verify()
    out = {n: ckpt.read(n) for n in ckpt.tensors if not n.startswith("rng/")}
    ckpt.close()
    return out


def test_layout_round_trips_are_bit_exact(trained, tmp_path):
    reference = _all_tensors(trained)
    assert any(n.startswith("optim/exp_avg_sq/") for n in reference)
    converted = {}
    for tp, pp, vp in GRID:
        dst = tmp_path / f"tp{tp}pp{pp}vp{vp}"
        convert(_args(trained, dst, tp=tp, pp=pp, vp=vp))
        ckpt = Checkpoint(dst)
        assert (ckpt.layout["tp"], ckpt.layout["pp"], ckpt.layout["vp"], ckpt.step) == (tp, pp, vp, 3)
        assert len(ckpt.files) == tp * pp
        converted[(tp, pp, vp)] = dst
    for a, b in itertools.permutations(GRID, 2):
        there = tmp_path / f"{a}-{b}"
        back = tmp_path / f"{a}-{b}-back"
        convert(_args(converted[a], there, tp=b[0], pp=b[1], vp=b[2]))
        convert(_args(there, back, tp=a[0], pp=a[1], vp=a[2]))
        got = _all_tensors(back)
        assert got.keys() == reference.keys()
        for name, value in reference.items():
            assert np.array_equal(got[name], value), (a, b, name)


def test_inspect_prints_layout_and_verifies(trained):
    result = gpt3d("inspect", str(trained))
    assert result.returncode == 0, result.stderr
    assert "step 3   layout tp=1 pp=1 dp=1 vp=1" in result.stdout
    assert "model/blocks.3.mlp.fc2.weight" in result.stdout and "[32, 128]" in result.stdout
    assert "checksums: 1 files OK (sha256)" in result.stdout


def test_hf_round_trip_through_convert(trained, tmp_path):
    from transformers import GPT2LMHeadModel

    from gpt3d.model.gpt import build_gpt
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    convert(_args(trained, hf_dir, to_format="hf"))
    ckpt = Checkpoint(trained)
    cfg = ckpt.model_config()
    model = build_gpt(cfg, 0)
    model.load_state_dict({n[len("model/"):]: torch.from_numpy(ckpt.read(n)) for n in ckpt.names("model/")})
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids), hf(ids).logits, atol=1e-5, rtol=0)
    convert(_args(hf_dir, back, from_format="hf", tp=2, pp=2))
    imported = _all_tensors(back)
    original = _all_tensors(trained)
    assert {n for n in imported} == {n for n in original if n.startswith("model/")}
    for name, value in imported.items():
        assert np.array_equal(value, original[name]), name


@pytest.mark.parametrize("flavour", ["legacy", "torch_dist"])
def test_megatron_round_trip_through_convert(trained, tmp_path, flavour):
    """gpt3d -> Megatron-LM (tp 2 x pp 2, Megatron's own vocabulary padding and fused-QKV order) -> gpt3d (tp 1):
    the model comes back bit for bit. (Megatron's own GPTModel reading these files: tests/interop.)"""
    megatron_dir, back = tmp_path / "megatron", tmp_path / "back"
    convert(_args(trained, megatron_dir, to_format="megatron", tp=2, pp=2, megatron_format=flavour))
    assert (megatron_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    convert(_args(megatron_dir, back, from_format="megatron"))
    imported, original = _all_tensors(back), _all_tensors(trained)
    assert set(imported) == {n for n in original if n.startswith("model/")}
    for name, value in imported.items():
        assert np.array_equal(value, original[name]), name


def test_convert_refuses_bad_input_and_writes_nothing(trained, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"existing: already exists; convert never overwrites"):
        convert(_args(trained, existing, tp=2))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    with pytest.raises(CheckpointError, match=r"layout tp=3 pp=1 vp=1: tp=3 does not divide n_heads=4"):
        convert(_args(trained, tmp_path / "bad", tp=3))
    with pytest.raises(CheckpointError, match=r"pp\*vp=3 does not divide n_layers=4"):
        convert(_args(trained, tmp_path / "bad", pp=3))
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    result = gpt3d("convert", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert result.returncode == 2 and "nowhere: no such checkpoint directory" in result.stderr


def test_resume_with_wrong_vocabulary_is_refused_before_training(trained, tmp_path):
    out = tmp_path / "run"
    result = run(train_cmd(out, 4, "--resume", str(trained), "--set", "model.vocab_size=500"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{trained}/metadata.json: does not match this run's config: vocabulary: checkpoint vocab_size=512, " \
           f"run model.vocab_size=500" in result.stderr
    assert not out.exists()
