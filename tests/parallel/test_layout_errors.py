"""Every invalid layout is rejected with its own message before any process or process group exists: the checks run
in this process (torch.distributed stays uninitialised), and `gpt3d train` exits 2 without starting a rank."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from gpt3d.config.base import ConfigError
from gpt3d.parallel.context import LayoutError
from gpt3d.train.runtime import check_layout

from .harness import make_config

REPO = Path(__file__).resolve().parents[2]


def check(overrides: list[str], world_size: int):
    return check_layout(make_config(overrides), world_size)


# tiny config: 4 layers, 4 heads, d_ff 256, vocab 250 padded to 256, seq 32, global batch 8, micro-batch 2
LAYOUT_ERRORS = {
    "world != tp*pp*dp": (["parallel.tp=2", "parallel.pp=2", "parallel.dp=2"], 4,
                          r"tp=2 x pp=2 x dp=2 = 8 ranks, but the world has 4; make tp\*pp\*dp equal"),
    "heads not divisible by tp": (["parallel.tp=3"], 3, r"model.n_heads=4 is not divisible by tp=3"),
    "padded vocab not divisible by tp": (
        ["parallel.tp=8", "model.n_heads=8", "model.vocab_pad_multiple=4"], 8,
        r"padded vocabulary 252 \(vocab 250 padded to a multiple of 4\) is not divisible by tp=8; "
        r"raise model.vocab_pad_multiple"),
    "d_ff not divisible by tp": (["parallel.tp=4", "model.d_ff=250"], 4, r"model.d_ff=250 is not divisible by tp=4"),
    "layers not divisible into pp": (["parallel.pp=3"], 3,
                                     r"model.n_layers=4 cannot be split evenly into pp\*vp=3\*1=3 stages"),
    "layers not divisible into pp*vp": (["parallel.pp=2", "parallel.vp=3"], 2,
                                        r"model.n_layers=4 cannot be split evenly into pp\*vp=2\*3=6 stages"),
    "global batch not micro*m*dp": (["parallel.dp=3"], 3,
                                    r"train.global_batch_size=8 is not micro_batch_size=2 x num_micro_batches x "
                                    r"dp=3; make it a multiple of 6"),
    "interleaved with m not divisible by pp": (
        ["parallel.pp=2", "parallel.vp=2", "train.global_batch_size=6"], 2,
        r"interleaved schedule \(vp=2\) needs the number of micro-batches \(3 = 6 / \(2 x dp 1\)\) divisible by pp=2"),
    "zbv with layers not divisible into 2*pp chunks": (
        ["parallel.pp=4", "parallel.schedule=zbv"], 4,
        r"schedule zbv: model.n_layers=4 cannot be divided into 2\*pp=8 model chunks \(two per rank, in a V\)"),
    "zbv with fewer micro-batches than stages": (
        ["parallel.pp=4", "parallel.schedule=zbv", "model.n_layers=8", "train.global_batch_size=6"], 4,
        r"schedule zbv needs at least pp=4 micro-batches, got 3 = 6 / \(2 x dp 1\)"),
    "sequence parallel with seq not divisible by tp": (
        ["parallel.tp=4", "parallel.sequence_parallel=true", "train.seq_len=30"], 4,
        r"sequence parallel needs seq_len=30 divisible by tp=4"),
}


@pytest.mark.parametrize("case", list(LAYOUT_ERRORS))
def test_invalid_layout_is_rejected_before_any_process(case):
    overrides, world, message = LAYOUT_ERRORS[case]
    with pytest.raises(LayoutError, match=message):
        check(overrides, world)
    assert not dist.is_initialized()


CONFIG_ERRORS = {
    "vp > 1 with pp = 1": (["parallel.vp=2"], r"parallel.vp: vp=2 needs pp > 1"),
    "interleaved with gpipe": (["parallel.pp=2", "parallel.vp=2", "parallel.schedule=gpipe"],
                               r"parallel.schedule: schedule gpipe runs one model chunk per rank; vp > 1 needs "
                               r"interleaved \(or zbv\)"),
    "zbh1 with vp 2": (["parallel.pp=2", "parallel.vp=2", "parallel.schedule=zbh1"],
                       r"parallel.schedule: schedule zbh1 runs one model chunk per rank"),
    "zbv with vp 3": (["parallel.pp=2", "parallel.vp=3", "parallel.schedule=zbv"],
                      r"parallel.vp: schedule zbv runs exactly 2 model chunks per rank, got vp=3"),
    "zbv without a pipeline": (["parallel.schedule=zbv"], r"parallel.schedule: zbv needs pp > 1"),
    "interleaved with one chunk": (["parallel.pp=2", "parallel.schedule=interleaved"],
                                   r"parallel.schedule: interleaved needs vp > 1 model chunks per rank"),
    "pipeline split with an empty stage": (["parallel.pp=4", "parallel.pipeline_split=[2,2,0,0]"],
                                           r"parallel.pipeline_split: every stage needs at least one layer"),
    "pipeline split of the wrong length": (["parallel.pp=2", "parallel.pipeline_split=[1,1,2]"],
                                           r"parallel.pipeline_split: has 3 entries; needs pp\*vp = 2"),
    "zero degree": (["parallel.tp=0"], r"parallel.tp: must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_invalid_parallel_config_is_a_config_error(case):
    overrides, message = CONFIG_ERRORS[case]
    with pytest.raises(ConfigError, match=message):
        make_config(overrides)
    assert not dist.is_initialized()


def test_valid_layouts_pass_and_count_micro_batches():
    assert check(["parallel.tp=2", "parallel.pp=2", "parallel.dp=2"], 8)[1] == 2
    assert check(["parallel.tp=2", "parallel.pp=2", "parallel.vp=2"], 4)[1] == 4
    layout, m = check(["parallel.tp=2", "parallel.pp=2"], 8)  # dp defaults to world / (tp * pp)
    assert (layout.dp, m) == (2, 2)


@pytest.mark.parametrize("flags,message", [
    (["--tp", "3"], "model.n_heads=4 is not divisible by tp=3"),
    (["--pp", "3"], "model.n_layers=4 cannot be split evenly into pp*vp=3*1=3 stages"),
    (["--pp", "2", "--vp", "2", "--dp", "3"], "train.global_batch_size=8 is not micro_batch_size=2"),
], ids=["tp3", "pp3", "dp3"])
def test_cli_bad_layout_exits_2_without_starting_ranks(tmp_path, flags, message):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "gpt3d", "train", "tiny-test", *flags, "--steps", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert "gpt3d train: error: " in proc.stderr and message in proc.stderr, proc.stderr
    assert "starting" not in proc.stdout  # no rank was started ...
    assert not out.exists()  # ... and nothing was written
