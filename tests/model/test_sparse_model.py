"""GPT-3's alternating dense / block-sparse pattern in the model: it learns like the dense model on real text, and
its parallel layouts match the single-process run."""
import json
import subprocess
import sys

import pytest

from gpt3d.config import load_config
from gpt3d.launch.spawn import spawn
from gpt3d.model.gpt import build_gpt

SPARSE = ["model.attention_pattern=alternating", "model.sparse.layout=fixed", "model.sparse.block=16",
          "model.sparse.num_local_blocks=2", "model.sparse.num_global_blocks=1"]


def test_layers_alternate_and_heads_split_under_tp():
    cfg = load_config("tiny-test", SPARSE)
    model = build_gpt(cfg.model, seed=0)
    kinds = [block.attn.kind for block in model.blocks.values()]
    assert kinds == ["dense", "sparse", "dense", "sparse"]
    layout = model.blocks["1"].attn.layout
    assert layout.shape == (cfg.model.n_heads, 4, 4) and model.blocks["0"].attn.layout is None
    assert not layout.all()  # really sparse at seq 64, block 16, band 2


def _train_losses(tmp_path, name, extra, steps):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "gpt3d", "train", "tiny-test", "--out", str(out), "--steps", str(steps),
           "--set", "optim.lr=3e-3", "--set", "optim.warmup_steps=10", "--set", "train.threads=2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_alternating_sparse_model_tracks_dense_on_default_corpus(tmp_path):
    steps = 150
    dense = _train_losses(tmp_path, "dense", [], steps)
    sparse = _train_losses(tmp_path, "sparse", [arg for kv in SPARSE for arg in ("--set", kv)], steps)
    tail = slice(steps - 20, steps)
    dense_end, sparse_end = sum(dense[tail]) / 20, sum(sparse[tail]) / 20
    assert sparse_end < sparse[0] - 1.5  # it learns
    assert abs(sparse_end - dense_end) < 0.1 * dense_end  # and tracks the dense model


def _run(rank, world, overrides):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "parallel"))
    from harness import run
    return run(rank, world, overrides, 3)


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"]])
def test_sparse_layers_match_single_process_under_tp_and_pp(layout):
    overrides = SPARSE + ["model.seq_len=64", "train.seq_len=64"]
    reference = _run(0, 1, overrides)
    parallel = spawn(_run, 2, overrides + layout, collect=True)[0]
    for a, b in zip(parallel["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b)
    for name, grad in reference["grads"].items():
        assert (parallel["grads"][name] - grad).abs().max().item() < 1e-6, name
