"""Checkpoints across precisions: a bf16 run stores its fp32 master weights (not the bf16 weights), and an fp32
checkpoint (the format every checkpoint had before mixed precision) resumes in a bf16 run."""
import numpy as np
import pytest

from gpt3d.checkpoint import Checkpoint

from .helpers import losses, run, train_cmd

U = 2.0 ** -8  # bf16 unit roundoff


def _bf16_representable(values: np.ndarray) -> np.ndarray:
    """Whether each fp32 value has at most bf16's 8 significant bits (its low 16 bits are zero)."""
    return (values.astype(np.float32).view(np.uint32) & 0xFFFF) == 0


@pytest.fixture(scope="module")
def fp32_then_bf16(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    source = run(train_cmd(root / "fp32", 4, "--save-interval", "2"))
    assert source.returncode == 0, source.stderr[-3000:]
    resumed = run(train_cmd(root / "bf16", 4, "--set", "train.dtype=bf16",
                            "--resume", str(root / "fp32" / "checkpoints" / "step_00000002")))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return root, resumed


def test_fp32_checkpoint_resumes_in_bf16(fp32_then_bf16):
    root, resumed = fp32_then_bf16
    assert "at step 2 with optimizer state" in resumed.stdout
    got, ref = losses(root / "bf16"), losses(root / "fp32")
    assert sorted(got) == [3, 4]
    # Same masters and moments; only the forward/backward now rounds to bf16 (loss within a few bf16 steps).
    for step in (3, 4):
        assert got[step] == pytest.approx(ref[step], rel=4 * U)
        assert got[step] != ref[step]  # bf16 really ran


def test_bf16_checkpoint_stores_fp32_master_weights(fp32_then_bf16):
    root, _ = fp32_then_bf16
    ckpt = Checkpoint(root / "bf16" / "checkpoints" / "step_00000004")
    assert ckpt.trainer["precision"] == {"dtype": "bf16", "model_tensors": "fp32 master weights"}
    names = ckpt.names("model/")
    assert names and all(ckpt.tensors[n]["dtype"] == "F32" for n in names)
    weight = ckpt.read("model/blocks.0.mlp.fc1.weight")
    # Master weights carry more than bf16's 8 bits: most updated values are not representable in bf16.
    assert _bf16_representable(weight).mean() < 0.1
