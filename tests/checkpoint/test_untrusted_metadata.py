"""A checkpoint's metadata.json is checked, not trusted: its own checksum, every piece against the safetensors header
(key, dtype, shape, so no read reaches a neighbour's bytes), and plain file names only (no path leaves the
checkpoint). `gpt3d inspect` reports each as one error line instead of "checksums OK"."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from gpt3d.checkpoint.errors import CheckpointError
from gpt3d.checkpoint.format import META_SHA, Checkpoint, RankFileWriter, metadata_digest, write_metadata
from gpt3d.checkpoint.inspect import run as inspect_main

A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.arange(100, 112, dtype=np.float32).reshape(4, 3)
C = -np.arange(6, dtype=np.float32).reshape(2, 3)


def checkpoint(directory: Path) -> Path:
    w = RankFileWriter(directory, "tp00-pp00-dp00.safetensors")
    for name, arr in (("model/a", A), ("model/b", B), ("model/c", C)):
        w.add(name, "F32", arr.shape, (0, 0), arr.shape, arr)
    files, tensors = w.write()
    write_metadata(directory, {"step": 3, "layout": {"tp": 1, "pp": 1, "dp": 1, "vp": 1}, "config": {},
                               "trainer": {}, "files": files, "tensors": tensors})
    return directory


def edit(directory: Path, change, resign: bool) -> dict:
    path = directory / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    if resign:  # a consistent-looking metadata.json: only the checks against the files can catch it
        meta[META_SHA] = metadata_digest(meta)
    path.write_text(json.dumps(meta))
    return meta


def inspect_error(directory: Path, capsys) -> str:
    assert inspect_main(argparse.Namespace(ckpt=str(directory), config=False, no_verify=False)) == 2
    captured = capsys.readouterr()
    assert "checksums" not in captured.out
    assert captured.err.count("\n") == 1
    return captured.err


def test_intact_checkpoint_reads_back(tmp_path, capsys):
    ckpt = Checkpoint(checkpoint(tmp_path))
    ckpt.verify()
    assert np.array_equal(ckpt.read("model/b"), B)
    assert inspect_main(argparse.Namespace(ckpt=str(tmp_path), config=False, no_verify=False)) == 0
    assert "checksums: 1 files OK" in capsys.readouterr().out


def test_piece_pointing_at_a_smaller_key_is_refused(tmp_path, capsys):
    checkpoint(tmp_path)

    def point_b_at_a(meta):
        meta["tensors"]["model/b"]["pieces"][0]["key"] = "model/a"
    edit(tmp_path, point_b_at_a, resign=True)
    message = (f"{tmp_path}/metadata.json: tensor model/b expects key 'model/a' of "
               f"{tmp_path}/tp00-pp00-dp00.safetensors to be F32 [4, 3], but its header has F32 [2, 3]: the metadata "
               f"does not match the file; resume from another checkpoint")
    with pytest.raises(CheckpointError) as exc:
        Checkpoint(tmp_path).read("model/b")
    assert str(exc.value) == message
    with pytest.raises(CheckpointError, match="expects key 'model/a'"):
        Checkpoint(tmp_path).verify()
    assert inspect_error(tmp_path, capsys) == f"gpt3d inspect: error: {message}\n"


def test_piece_with_the_wrong_dtype_or_region_is_refused(tmp_path):
    checkpoint(tmp_path)
    edit(tmp_path, lambda m: m["tensors"]["model/a"].update(dtype="F64"), resign=True)
    with pytest.raises(CheckpointError, match=r"tensor model/a expects key 'model/a' of .* to be F64 \[2, 3\], but "
                                              r"its header has F32 \[2, 3\]"):
        Checkpoint(tmp_path).read("model/a")
    edit(tmp_path, lambda m: m["tensors"]["model/a"].update(dtype="F32", shape=[1, 3]), resign=True)
    with pytest.raises(CheckpointError, match=r"tensor model/a \(dtype F32, shape \[1, 3\]\) has a piece "
                                              r"start=\[0, 0\] size=\[2, 3\] flat=None outside it"):
        Checkpoint(tmp_path)


def test_swapped_same_shape_keys_fail_the_metadata_checksum(tmp_path, capsys):
    checkpoint(tmp_path)

    def swap(meta):
        t = meta["tensors"]
        t["model/a"]["pieces"][0]["key"], t["model/c"]["pieces"][0]["key"] = "model/c", "model/a"
    edit(tmp_path, swap, resign=False)
    message = (f"{tmp_path}/metadata.json: does not match its recorded sha256 ({META_SHA}): the metadata was "
               f"edited or corrupted; resume from another checkpoint")
    with pytest.raises(CheckpointError) as exc:
        Checkpoint(tmp_path).verify()
    assert str(exc.value) == message
    assert inspect_error(tmp_path, capsys) == f"gpt3d inspect: error: {message}\n"


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", ".."])
def test_file_names_must_stay_inside_the_checkpoint(tmp_path, capsys, name):
    (tmp_path / "ckpt").mkdir()
    ckpt_dir = checkpoint(tmp_path / "ckpt")
    (tmp_path / "outside.safetensors").write_bytes((ckpt_dir / "tp00-pp00-dp00.safetensors").read_bytes())

    def escape(meta):
        info = meta["files"].pop("tp00-pp00-dp00.safetensors")
        meta["files"][name] = info
        for t in meta["tensors"].values():
            t["pieces"][0]["file"] = name
    edit(ckpt_dir, escape, resign=True)
    message = (f"{ckpt_dir}/metadata.json: lists file {name!r}, which is not a plain file name inside {ckpt_dir}; "
               f"a checkpoint only reads its own files: the metadata is corrupted or hostile")
    with pytest.raises(CheckpointError) as exc:
        Checkpoint(ckpt_dir)
    assert str(exc.value) == message
    assert inspect_error(ckpt_dir, capsys) == f"gpt3d inspect: error: {message}\n"
