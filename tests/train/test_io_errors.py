"""Disk full and unwritable output during train, resume, convert and preprocess: one line naming the path and the
errno, and no partial `.tmp-*` left behind. A full disk is simulated with RLIMIT_FSIZE (writes past the limit fail with
EFBIG, "File too large", the same code path as ENOSPC without needing a mount); an unwritable --out with a directory
under /sys, which refuses new entries even to root (EPERM)."""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from tests.checkpoint.helpers import REPO, TINY, env

LIMIT = 256 * 1024  # bytes: more than config.yaml and metrics, less than one checkpoint file


def gpt3d(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "gpt3d", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=600, preexec_fn=cap if limit else None)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*") if ".tmp" in p.name)


def test_disk_full_in_train_resume_and_convert(tmp_path):
    from gpt3d.config.run import load_config
    from gpt3d.train.loop import build_data
    build_data(load_config("tiny-test", TINY[1::2]))  # the cached corpus exists before the size limit applies

    ok = gpt3d("train", "tiny-test", "--out", str(tmp_path / "a"), "--steps", "2", "--save-interval", "2", *TINY)
    assert ok.returncode == 0, ok.stderr[-3000:]

    full = gpt3d("train", "tiny-test", "--out", str(tmp_path / "b"), "--steps", "2", "--save-interval", "2", *TINY,
                 limit=LIMIT)
    assert full.returncode == 1
    assert last_line(full) == (f"gpt3d train: error: {tmp_path}/b/checkpoints/.tmp-step_00000002/"
                               f"tp00-pp00-dp00.safetensors: File too large (EFBIG) (rank 0)")
    assert leftovers(tmp_path / "b") == []

    resumed = gpt3d("train", "tiny-test", "--out", str(tmp_path / "a"), "--steps", "4", "--save-interval", "2", *TINY,
                    limit=LIMIT)
    assert resumed.returncode == 1 and "gpt3d: resumed from" in resumed.stdout
    assert last_line(resumed).startswith(f"gpt3d train: error: {tmp_path}/a/checkpoints/.tmp-step_00000004/")
    assert last_line(resumed).endswith(": File too large (EFBIG) (rank 0)")
    assert leftovers(tmp_path / "a") == []

    converted = gpt3d("convert", str(tmp_path / "a"), str(tmp_path / "c"), "--tp", "2", "--quiet", limit=LIMIT)
    assert converted.returncode == 2
    assert last_line(converted).startswith(f"gpt3d convert: error: {tmp_path}/.c.tmp-")
    assert last_line(converted).endswith(": File too large (EFBIG)") and converted.stderr.count("\n") == 1
    assert leftovers(tmp_path) == [] and not (tmp_path / "c").exists()



def test_disk_full_in_preprocess(tmp_path):
    (tmp_path / "p").mkdir()
    text = tmp_path / "text.txt"
    text.write_text(" ".join(str(i * 7919 % 100003) for i in range(200000)))  # ~1.2 MB of varied text
    pre = gpt3d("preprocess", "--input", str(text), "--output-prefix", str(tmp_path / "p" / "ds"),
                "--train-tokenizer", "300", limit=LIMIT)
    assert pre.returncode == 2  # stderr also holds the progress bars
    assert last_line(pre) == f"gpt3d preprocess: error: {tmp_path}/p/ds.bin/.idx: File too large (EFBIG)"
    assert leftovers(tmp_path) == []


def test_unwritable_out_is_one_line_before_any_rank_starts(tmp_path):
    out = "/sys/gpt3d-test-unwritable-run"
    result = gpt3d("train", "tiny-test", "--out", out, "--steps", "2", *TINY)
    assert result.returncode == 2
    assert result.stderr == f"gpt3d train: error: {out}: Operation not permitted (EPERM)\n"
