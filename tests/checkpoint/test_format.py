"""The file format without any training: streaming safetensors, region assembly from any pieces, integrity errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.checkpoint.format import Checkpoint, RankFileWriter, merge_tensors, write_metadata
from gpt3d.checkpoint.safetensors_io import SafetensorsReader, SafetensorsWriter

PKG = Path(__file__).resolve().parents[2] / "gpt3d" / "checkpoint"


def test_streaming_writer_is_standard_safetensors(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.int64)
    w = SafetensorsWriter(tmp_path / "x.safetensors", [("a", "F32", (3, 4)), ("b", "I64", (5,))])
    w.write("a", a)
    w.write("b", b)
    sha, size = w.close()
    loaded = load_file(tmp_path / "x.safetensors")  # the reference implementation reads it
    assert np.array_equal(loaded["a"], a) and np.array_equal(loaded["b"], b)
    r = SafetensorsReader(tmp_path / "x.safetensors")
    assert np.array_equal(r.read_rows("a", 1, 3), a[1:3]) and np.array_equal(r.read_flat("b", 2, 4), b[2:4])
    assert size == (tmp_path / "x.safetensors").stat().st_size and len(sha) == 64


def _write_layout(directory: Path, full: np.ndarray, rect_splits: int, dim: int, flat_splits: int) -> None:
    """Store `full` the way a TP x DP layout would: chunks along `dim`, each cut into flat DP shards (with the shard
    boundaries falling mid-row), one file per piece."""
    files, tensors = {}, {}
    chunk = full.shape[dim] // rect_splits
    for t in range(rect_splits):
        start = [0, 0]
        start[dim] = t * chunk
        size = list(full.shape)
        size[dim] = chunk
        region = full[start[0]:start[0] + size[0], start[1]:start[1] + size[1]]
        flat = region.reshape(-1)
        bounds = np.linspace(0, flat.size, flat_splits + 1).astype(int)
        for d in range(flat_splits):
            w = RankFileWriter(directory, f"t{t}-d{d}.safetensors")
            lo, hi = bounds[d], bounds[d + 1]
            if flat_splits == 1:
                w.add("x", "F32", full.shape, start, size, region)
            else:
                w.add("x", "F32", full.shape, start, size, flat[lo:hi], flat=(lo, hi))
            f, ts = w.write()
            files.update(f)
            merge_tensors(tensors, ts)
    write_metadata(directory, {"step": 0, "layout": {}, "config": {}, "trainer": {}, "files": files,
                               "tensors": tensors})


@pytest.mark.parametrize("src", [(1, 0, 1), (2, 0, 3), (4, 1, 1), (2, 1, 5)])
@pytest.mark.parametrize("dst", [(1, 0), (4, 0), (2, 1), (8, 1)])
def test_any_region_reads_exactly_from_any_pieces(tmp_path, src, dst):
    full = np.random.default_rng(0).standard_normal((16, 24)).astype(np.float32)
    _write_layout(tmp_path, full, *src)
    ckpt = Checkpoint(tmp_path)
    ckpt.verify()
    splits, dim = dst
    chunk = full.shape[dim] // splits
    for t in range(splits):
        start, size = [0, 0], list(full.shape)
        start[dim], size[dim] = t * chunk, chunk
        got = ckpt.read_region("x", start, size)
        assert np.array_equal(got, full[start[0]:start[0] + size[0], start[1]:start[1] + size[1]])
    assert np.array_equal(ckpt.read("x"), full)


def _one_file_checkpoint(tmp_path) -> Path:
    _write_layout(tmp_path, np.ones((4, 4), np.float32), 2, 0, 1)
    return tmp_path


def test_corrupted_file_names_the_file(tmp_path):
    d = _one_file_checkpoint(tmp_path)
    path = d / "t1-d0.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"t1-d0\.safetensors: checksum mismatch"):
        Checkpoint(d).verify()


def test_truncated_file_names_the_file(tmp_path):
    d = _one_file_checkpoint(tmp_path)
    path = d / "t0-d0.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match=r"t0-d0\.safetensors: \d+ bytes, but .*metadata.json records \d+: "
                                              r"truncated"):
        Checkpoint(d)


def test_missing_file_and_metadata(tmp_path):
    d = _one_file_checkpoint(tmp_path)
    (d / "t0-d0.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"t0-d0\.safetensors: missing \(listed in"):
        Checkpoint(d)
    (d / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match=r"metadata.json: missing; .* is not a complete gpt3d checkpoint"):
        Checkpoint(d)


def test_garbage_metadata(tmp_path):
    d = _one_file_checkpoint(tmp_path)
    (d / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"metadata.json: not valid JSON"):
        Checkpoint(d)
    (d / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match=r"not a gpt3d checkpoint"):
        Checkpoint(d)


def test_no_pickle_anywhere_in_the_loader():
    """A checkpoint cannot execute code: the package never unpickles (no torch.load, no pickle)."""
    for path in PKG.glob("*.py"):
        text = path.read_text()
        assert "torch.load(" not in text and "import pickle" not in text, path
